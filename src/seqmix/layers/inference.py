"""Inference caches: values computed from parameters alone (a transposed weight, A = −exp(A_log)), kept across
calls while those parameters are unchanged, so decoding does not redo them for every token.

Nothing is cached while autograd records (training) or while torch.compile traces (the compiled graph folds or
fuses such expressions itself): there the value is computed afresh, exactly as without a cache.
"""
from __future__ import annotations

import ctypes
import mmap
from typing import Callable, Sequence

import torch
from torch import nn

from seqmix.layers import few_rows


def _unchanged(kept: tuple[torch.Tensor, ...], versions: tuple[int, ...], params: Sequence[torch.Tensor]) -> bool:
    # `kept` holds the storages the value was computed from, so no other tensor can be allocated at their
    # addresses while it is cached: same address and same version counter means the same, unmodified data.
    return len(kept) == len(params) and all(
        k.data_ptr() == p.data_ptr() and k.dtype == p.dtype and k.shape == p.shape and v == p._version
        for k, v, p in zip(kept, versions, params))


def cached(module: nn.Module, name: str, params: Sequence[torch.Tensor], compute: Callable[[], torch.Tensor]):
    """``compute()``, a function of ``params`` only, computed once per state of those parameters.

    The cache refreshes when any parameter is modified in place (optimizer steps, ``copy_``,
    ``load_state_dict``: each bumps the tensor's version counter) or replaced (``.to()``, ``param.data = ...``:
    a new storage). It lives on ``module`` and is used only when no graph is recorded.
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return compute()
    store = module.__dict__.setdefault("_inference_cache", {})
    hit = store.get(name)
    if hit is not None and _unchanged(hit[0], hit[1], params):
        return hit[2]
    value = compute()
    store[name] = (tuple(p.detach() for p in params), tuple(p._version for p in params), value)
    return value


INFERENCE_ROWS = 64  # up to this many rows (batch × tokens) a product reads the cached [in, out] weight
EXPORTED_WEIGHT = "exported_decode_weight"  # a Linear's attribute while the ExportedDecoder traces it


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same checkpoints) whose few-row inference products read the weight
    transposed: y = x W + b with a cached contiguous W = weightᵀ [in, out].

    Why: a one-row product over nn.Linear's [out, in] weight runs as a dot product per output, and on this
    machine's BLAS it streams a weight that is not in cache at about 11 GB/s on one thread; over [in, out] it
    is a sum of scaled rows and streams at about 29 GB/s (1024 × 256 float32: 86 µs against 36 µs). The
    copy costs the weight's size again in memory while decoding; it is made on CPU only. Training, large batches
    (more than ``INFERENCE_ROWS`` rows), GPUs and compiled graphs use ``F.linear`` on the parameter itself (the
    compiled decoder passes the cached copy in as that parameter, see ``seqmix.model.generate.CompiledDecoder``).
    The ahead-of-time decode step (``ExportedDecoder``) passes ``decode_weight()`` in as the attribute
    ``EXPORTED_WEIGHT`` (a tied head gets its own, not the embedding's [vocab, d] table), and inside
    ``few_rows.in_use()`` its few-row products run on seqmix's own kernel.
    """

    def inference_weight(self) -> torch.Tensor:
        """weightᵀ [in, out], contiguous, cached while the weight is unchanged (computed afresh while training)."""
        return cached(self, "weight_t", (self.weight,), lambda: self.weight.t().contiguous())

    def _few_row_inference(self, x: torch.Tensor) -> bool:
        """Whether `x` is a product of few rows on CPU outside training (and outside a compiled graph)."""
        return not (torch.compiler.is_compiling() or torch.is_grad_enabled() or x.device.type != "cpu"
                    or x.numel() > INFERENCE_ROWS * self.in_features)  # (no size test while tracing: a guard)

    def _inference_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The cached weightᵀ for a few-row inference product over a weight of at least ``few_rows.MIN_WEIGHT``
        elements, else None. A smaller weight stays in cache, where F.linear reads it as fast and the cache's
        checks only add overhead (the arena's d 88 models decoded about 10 % slower with them)."""
        if self.weight.numel() < few_rows.MIN_WEIGHT or not self._few_row_inference(x):
            return None
        return self.inference_weight()

    def decode_transposed(self) -> bool:
        """Whether the ahead-of-time decode step reads this weight as [in, out] (wide outputs, or torch's BLAS
        where the few-row kernel is not built) rather than as the [out, in] parameter (narrow outputs)."""
        return not few_rows.available() or few_rows.prefers_transposed(self.out_features, self.in_features)

    def decode_weight(self) -> torch.Tensor:
        """The weight [out, in] as the ahead-of-time decode step reads it: the parameter itself, or (where
        ``decode_transposed``) the cached transposed copy viewed [out, in]."""
        return self.inference_weight().t() if self.decode_transposed() else self.weight.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if EXPORTED_WEIGHT in self.__dict__:  # traced for the ahead-of-time decode step
            weight = self.__dict__[EXPORTED_WEIGHT]
            if few_rows.usable(x, weight):
                return few_rows.linear(x, weight, self.bias)
            return nn.functional.linear(x, weight, self.bias)
        w_t = self._inference_weight(x)
        if w_t is None:
            return nn.functional.linear(x, self.weight, self.bias)
        if self.bias is None:
            return x @ w_t
        return torch.addmm(self.bias, x.reshape(-1, self.in_features), w_t).view(*x.shape[:-1], self.out_features)

    def parts(self, x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """The outputs split into blocks of `sizes` (along the last dimension). When training, one product per
        block of weight rows (a product twice as wide runs below BLAS peak on CPU); inference, one product."""
        if self._few_row_inference(x) or EXPORTED_WEIGHT in self.__dict__:
            return self(x).split(list(sizes), dim=-1)
        weights = self.weight.split(list(sizes))
        biases = (None,) * len(sizes) if self.bias is None else self.bias.split(list(sizes))
        return tuple(nn.functional.linear(x, w, b) for w, b in zip(weights, biases))

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + x weightᵀ (+ bias), in one fused product when training."""
        if self._few_row_inference(x) or self.bias is not None or EXPORTED_WEIGHT in self.__dict__:
            return residual + self(x)
        return torch.addmm(residual.flatten(0, -2), x.flatten(0, -2), self.weight.t()).view_as(residual)


def side_by_side(owner: nn.Module, name: str, layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """[x W_1ᵀ, x W_2ᵀ, …] [.., Σ out_i], the outputs of linear layers side by side (what a convolution over all
    of them reads).

    Outside training, one product over the weights concatenated once (cached on ``owner`` as ``name``), so the
    outputs are written side by side instead of copied together afterwards (that copy into fresh memory took
    36 ms against 276 ms for the products, 4096 tokens × 2048 channels on one thread); few rows read the
    concatenation transposed on CPU, as ``Linear`` does. The cache costs the weights' size again in memory.
    While training or compiling, or for layers that are not plain ``nn.Linear`` (e.g. weight-only low
    precision): the separate products, concatenated.
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or not all(
            type(layer) in (Linear, nn.Linear) and layer.bias is None for layer in layers):
        return torch.cat([layer(x) for layer in layers], dim=-1)
    weights = tuple(layer.weight for layer in layers)
    if x.numel() <= INFERENCE_ROWS * x.shape[-1] and x.device.type == "cpu":
        return x @ cached(owner, name + "_t", weights, lambda: torch.cat(weights).t().contiguous())
    return nn.functional.linear(x, cached(owner, name, weights, lambda: torch.cat(weights)))


_HUGE_PAGE = 2 << 20


def _page_backed(numel: int) -> torch.Tensor:
    """An uninitialised float32 tensor in fresh anonymous memory, advised to the kernel as 2 MiB pages where the
    OS allows it (Linux ``madvise(MADV_HUGEPAGE)``; a no-op elsewhere), before anything touches it."""
    size = -(-numel * 4 // _HUGE_PAGE) * _HUGE_PAGE + _HUGE_PAGE  # whole pages, and one to align the start
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = memoryview(memory)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    start = -address % _HUGE_PAGE
    if hasattr(memory, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE, start, size - start)
    return torch.frombuffer(view, dtype=torch.float32, count=numel, offset=start)  # keeps the mapping alive


def packed_decode_weights(linears: Sequence[Linear]) -> list[torch.Tensor]:
    """Copies of each layer's ``decode_weight()``, in the same layouts, side by side in one buffer backed by
    2 MiB pages (``_page_backed``). Decoding streams every weight once per token; across 4 KiB pages the
    processor's prefetchers stop at every page and the address translations miss, which costs most for the
    many weights of 0.5–1 MB (measured here with the few-row kernel: 512 × 512 weights 12.2 → 15.3 GB/s,
    512 × 2736 21.4 → 24.2 GB/s). Costs the weights' size again in memory."""
    sizes = [-(-m.weight.numel() // 16) * 16 for m in linears]  # 64-byte aligned
    buffer = _page_backed(sum(sizes))
    copies, offset = [], 0
    for m, size in zip(linears, sizes):
        part = buffer[offset:offset + m.weight.numel()]
        offset += size
        if m.decode_transposed():
            copies.append(part.view(m.in_features, m.out_features).copy_(m.weight.detach().t()).t())
        else:
            copies.append(part.view(m.out_features, m.in_features).copy_(m.weight.detach()))
    return copies

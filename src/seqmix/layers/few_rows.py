"""A product kernel for decoding on CPU: y = x Wᵀ (+ b) for a few rows x (one token per sequence), float32.

torch's BLAS streams a weight that does not fit in cache at 11–18 GB/s in a one-row product on this machine's
cores, below the 24 GB/s a plain read reaches; the decode step of a mid-size model is mostly such products.
``few_rows.cpp`` reads each weight as one sequential stream (a [in, out] copy for wide outputs, the [out, in]
weight itself for narrow ones) and splits the outputs between threads; see it for the layouts.

It is compiled on first use (``seqmix.native``) and loaded as the operator ``torch.ops.seqmix.few_rows_linear``.
Where it cannot be built (no compiler), ``available()`` says so once, with the reason, and decoding uses torch's
products. It is used inside ``seqmix.model.generate.ExportedDecoder`` (``sample(compile=True)``): ``in_use()``
turns it on for ``seqmix.layers.Linear`` while the decode step is exported.
"""
from __future__ import annotations

import pathlib

import torch

from seqmix.native import Kernel

MAX_ROWS = 4  # up to this many rows (batch × tokens) a product runs on the kernel; more go to torch's GEMM
MIN_WEIGHT = 65536  # elements (256 KB in float32): smaller weights stay in cache, where torch's BLAS is as fast


def _register_fake():
    torch.library.register_fake("seqmix::few_rows_linear")(_shape)


KERNEL = Kernel(pathlib.Path(__file__).with_name("few_rows.cpp"), "the few-row product kernel",
                "decoding uses torch's matrix products instead", on_load=_register_fake, enabled=False)


def available() -> bool:
    """Whether ``torch.ops.seqmix.few_rows_linear`` is loaded (built on the first call; see ``seqmix.native``)."""
    return KERNEL.available()


def _shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel takes this product: turned on (``in_use``), float32 on CPU, at most ``MAX_ROWS`` rows
    and a weight of at least ``MIN_WEIGHT`` elements (measured here: with 8 rows torch's GEMM is faster over a
    [512, 1024] weight, and over an [80, 320] one, which stays in cache, by about 1 µs at any row count)."""
    return (KERNEL.enabled and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.numel() <= MAX_ROWS * x.shape[-1] and weight.numel() >= MIN_WEIGHT)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x weightᵀ + bias, x [..., in], weight [out, in] contiguous or the transpose of a contiguous [in, out]."""
    return torch.ops.seqmix.few_rows_linear(x, weight, bias)


def prefers_transposed(out_features: int, in_features: int) -> bool:
    """Which weight layout the kernel streams fastest: [in, out] for wide outputs, [out, in] for narrow ones
    (weights too small for the kernel keep the [in, out] copy torch's BLAS streams best)."""
    return 2 * out_features > in_features or out_features * in_features < MIN_WEIGHT


def in_use():
    """Products of few rows in ``seqmix.layers.Linear`` run on the kernel inside this block (when it is built)."""
    return KERNEL.switched(available())

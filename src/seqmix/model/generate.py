"""Sampling through the recurrent state: the prompt is prefilled in one call (the mixers' chunked path),
then each new token costs one ``model.decode(token, state)`` step — O(1) per token for recurrent mixers,
one KV-cache step for attention."""
from __future__ import annotations

import tempfile
import time
import warnings
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_unflatten

from seqmix.data.tokenizer import ByteTokenizer
from seqmix.layers import Linear, few_rows
from seqmix.layers.inference import EXPORTED_WEIGHT, cached, packed_decode_weights
from seqmix.model.state import map_state


def sample(model, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
           top_k: int | None = None, seed: int | None = None, timings: dict | None = None,
           on_token: Callable[[torch.Tensor], None] | None = None, compile: bool = False) -> torch.Tensor:
    """prompt int64 [B, T ≥ 1] (B prompts of T tokens each) -> the new tokens [B, max_new_tokens].

    ``temperature=0`` is greedy decoding; ``top_k`` keeps the k most likely tokens; ``seed`` makes the
    sampling reproducible without touching the global RNG. Runs in inference mode (decoding is many small
    kernels, about 10–20% faster without view and version tracking); the tokens come back as an ordinary tensor.
    ``timings``: a dict that receives ``prefill_seconds`` (the prompt's forward) and ``decode_seconds`` (every
    token after it, sampling included), so generation speed is measured on this very path.
    ``on_token``: called with each step's tokens [B, 1] as soon as they are chosen (streaming).
    ``compile``: decode steps through the model's ``CompiledDecoder`` (see there), or on CUDA, for a state of
    fixed size, through one captured graph (``CudaGraphStep``); the tokens are the same, and ``timings`` also
    receives ``compile_seconds`` (building it, before decoding starts; ≈0 once the compiled step is built).
    """
    with torch.inference_mode():
        tokens = _sample(model, prompt, max_new_tokens, temperature, top_k, seed, timings, on_token, compile)
    return tokens.clone()


def _sample(model, prompt: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
            seed: int | None, timings: dict | None, on_token, compile: bool) -> torch.Tensor:
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be [batch, time] with time >= 1, got shape {tuple(prompt.shape)}")
    if max_new_tokens < 0 or temperature < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} and temperature={temperature} must be >= 0")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k}: must be a positive integer or None")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    was_training = model.training
    model.eval()
    prompt = prompt.to(device)
    step = model.decode
    start = time.perf_counter()
    logits, state = model(prompt, state=model.init_state(prompt.shape[0]))  # checks the prompt's ids
    if timings is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    prefilled = time.perf_counter()
    if compile:  # build the fast step now, so that decode_seconds times decoding alone
        step = _fast_step(model, logits[:, -1].argmax(-1, keepdim=True), state)
        if timings is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings["compile_seconds"] = time.perf_counter() - prefilled
    decoding = time.perf_counter()
    new = []
    for i in range(max_new_tokens):
        last = logits[:, -1].float()
        if temperature == 0:
            token = last.argmax(-1, keepdim=True)
        else:
            last = last / temperature
            if top_k is not None and top_k < last.shape[-1]:
                kth = last.topk(top_k, dim=-1).values[:, -1:]
                last = last.masked_fill(last < kth, float("-inf"))
            token = torch.multinomial(last.softmax(-1), 1, generator=generator)
        new.append(token)
        if on_token is not None:
            on_token(token)
        if i + 1 < max_new_tokens:
            logits, state = step(token, state)
    if timings is not None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.update(prefill_seconds=prefilled - start, decode_seconds=time.perf_counter() - decoding)
    model.train(was_training)
    return torch.cat(new, dim=1) if new else prompt.new_zeros(prompt.shape[0], 0)


def _fast_step(model, warm: torch.Tensor, state: list) -> Callable:
    """The decode step ``sample(compile=True)`` uses, built and warmed up for states like `state` after tokens
    like `warm` (made as the loop makes them: an inference tensor). One eager step tells whether the state grows
    (a KV cache). On CPU the step is the model's ``ExportedDecoder``; on CUDA a state of fixed size is decoded
    by replaying one captured graph (``CudaGraphStep``); a growing state on CUDA, or where those cannot be built
    (with a warning), goes through the model's ``CompiledDecoder``."""
    after = model.decode(warm, state)[1]
    grows = _shapes(state) != _shapes(after)
    on_cuda = warm.device.type == "cuda"
    if not (on_cuda and grows):
        what = "captured as a CUDA graph" if on_cuda else "compiled ahead of time"
        try:
            return CudaGraphStep(model, warm, after) if on_cuda else _exported_step(model, warm, state, after)
        except Exception as error:  # e.g. a step that synchronises with the host, no C++ toolchain
            if not grows:  # (a state that grows otherwise than by one position, e.g. BST's block buffer,
                # exports with no single dynamic length: torch.compile is its path, nothing to warn about)
                first = str(error).splitlines()[0] if str(error) else ""
                warnings.warn(f"the decode step cannot be {what} ({type(error).__name__}: {first}); using "
                              "torch.compile", RuntimeWarning, stacklevel=3)
    step = compiled_decoder(model).bind(warm, state, grows=grows)
    step(warm, step(warm, state)[1])  # a state after the prefill and one after a step differ in strides
    return step


def _exported_step(model, tokens: torch.Tensor, before: list, after: list) -> Callable:
    """The model's ``ExportedDecoder`` for this batch and state layout (built once, kept on the model), bound to
    the weights as they are now. `before`, `after`: a state and the next one, which tell the dimensions that
    grow by a step (a KV cache's length)."""
    flat_before, flat_after = tree_flatten(before)[0], tree_flatten(after)[0]
    growing = [tuple(d for d, (m, n) in enumerate(zip(a.shape, b.shape)) if m != n)
               for a, b in zip(flat_before, flat_after, strict=True)]
    key = (tuple(tokens.shape), torch.get_num_threads(), tuple(
        (tuple(-1 if d in dims else n for d, n in enumerate(t.shape)), None if dims else t.stride(), t.dtype,
         t.device) for t, dims in zip(flat_after, growing)))
    known = model.__dict__.get("_exported_decoders", {})
    if key in known and known[key] is None:
        raise RuntimeError("its export failed before for this batch and state layout")
    decoder = known.get(key)
    if decoder is None:  # stored once built: export may restore the model's attributes as they were before it
        try:
            decoder = ExportedDecoder(model, tokens, after, growing)
        finally:  # a failure is remembered too: exporting again would fail again, after as long
            model.__dict__.setdefault("_exported_decoders", {})[key] = decoder
    return decoder.bind()


class _FlatState(list):
    """A state as the exported step takes and returns it: its tensors in ``tree_flatten`` order."""


class _FlatDecode(nn.Module):
    """``model.decode`` over flat tensors, for export: (tokens, *weights, *state) -> (logits, *state)."""

    def __init__(self, model, names: list[str], spec):
        super().__init__()
        self.step, self.names, self.spec = _DecodeStep(model), names, spec

    def forward(self, tokens, *flat):
        weights = dict(zip(self.names, flat[:len(self.names)]))
        state = tree_unflatten(list(flat[len(self.names):]), self.spec)
        logits, new = functional_call(self.step, weights, (tokens, state))
        return (logits, *tree_flatten(new)[0])


class ExportedDecoder:
    """``model.decode`` for one batch size and state layout, exported (``torch.export``) and compiled ahead of
    time by AOTInductor into a shared library; each step is one call of its C++ runner on a flat list of tensors
    (tokens, every parameter and buffer, the state), about 2 µs of overhead against ≈ 150 µs for a
    torch.compile'd call (guards, argument handling), which is most of a small model's step on CPU.

    Every parameter and buffer is an input, none is baked in: ``bind()`` passes them as they are, and each
    ``Linear``'s ``decode_weight()`` besides (the layout its products read; a tied head gets its own rather
    than the embedding's [vocab, d] table), copied side by side into memory of 2 MiB pages
    (``packed_decode_weights``, kept until a weight changes), so weight updates are seen without recompiling,
    and parameter-only expressions (A = −exp(A_log)) are computed inside the step, fused.
    ``growing``: for each state tensor (``tree_flatten`` order) the dimensions that grow by one per step (a KV
    cache's length), exported as one dynamic size; such tensors go in and come out contiguous, the others in
    the layout of `state`. The runner's kernels use the thread count current at build time. Checked when built:
    one step equal to eager decoding (to 1e-4 relative), the state coming back in the layout it went in.
    Products of few rows (``seqmix.layers.Linear``, float32) run on seqmix's own kernel
    (``seqmix.layers.few_rows``), which streams the weights faster than torch's BLAS does one row at a time.
    Building takes seconds to a minute (a C++ compiler is needed).
    """

    def __init__(self, model, tokens: torch.Tensor, state: list, growing: list[tuple[int, ...]]):
        self.model = model
        self.wrapper = _DecodeStep(model)
        self.linears = {f"{name}.{EXPORTED_WEIGHT}": module for name, module in self.wrapper.named_modules()
                        if isinstance(module, Linear)}  # each Linear's decode layout, an input of its own
        self.names = [name for name, _ in self.wrapper.named_parameters()] + [
            name for name, _ in self.wrapper.named_buffers()] + list(self.linears)
        flat, self.spec = tree_flatten(state)
        flat = [t.contiguous() if dims else t for t, dims in zip(flat, growing)]
        self.strides = [None if dims else t.stride() for t, dims in zip(flat, growing)]
        values = self._values()
        length = torch.export.Dim("length")
        dynamic = (None, (*(None for _ in values), *({d: length for d in dims} or None for dims in growing)))
        with torch.inference_mode(False), torch.no_grad(), tempfile.TemporaryDirectory() as folder, \
                warnings.catch_warnings(), few_rows.in_use():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations inside export
            # ordinary tensors with the very strides (clone() would compact a slice's): the runner assumes them
            example = tuple(_strided(t, t.stride()) for t in (tokens, *values, *flat))
            program = torch.export.export(_FlatDecode(model, self.names, self.spec), example, strict=False,
                                          dynamic_shapes=dynamic if any(growing) else None)
            path = torch._inductor.aoti_compile_and_package(program, package_path=f"{folder}/decode.pt2")
            self.run = torch._inductor.aoti_load_package(path).loader.run
        with torch.no_grad():
            out = self.run([tokens, *values, *flat])
            expected, _ = model.decode(tokens, tree_unflatten(flat, self.spec))
        if any(t.stride() != s if s is not None else not t.is_contiguous() for t, s in zip(out[1:], self.strides)):
            raise RuntimeError("the exported step returns its state in another memory layout than it takes it")
        error = ((out[0] - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()
        if not error <= 1e-4:
            raise RuntimeError(f"the exported step's logits differ from eager decoding by {error:.1e} (relative)")

    def _values(self) -> list[torch.Tensor]:
        named = dict(self.wrapper.named_parameters())
        named.update(self.wrapper.named_buffers())
        linears = list(self.linears.values())
        packed = dict(zip(self.linears, cached(self.model, "packed_decode_weights", [m.weight for m in linears],
                                               lambda: packed_decode_weights(linears))))
        return [packed[name] if name in packed else named[name].detach() for name in self.names]

    def bind(self) -> Callable:
        """step(tokens, state) -> (logits, state) with the weights as they are now; the state it returns is a
        ``_FlatState`` (what it takes fastest)."""
        with torch.no_grad():
            values = self._values()
        run, strides = self.run, self.strides

        def step(tokens, state):
            if not isinstance(state, _FlatState):  # the prefill's state: into the exported layout
                state = [t.contiguous() if s is None else t if t.stride() == s else _strided(t, s)
                         for t, s in zip(tree_flatten(state)[0], strides, strict=True)]
            out = run([tokens, *values, *state])
            return out[0], _FlatState(out[1:])
        return step


def _strided(t: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """A copy of `t` laid out with `stride`."""
    return torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device).copy_(t)


def _shapes(state) -> list:
    shapes = []
    map_state(lambda t: shapes.append(t.shape), state)
    return shapes


class CudaGraphStep:
    """``model.decode`` replayed from one captured CUDA graph: a step's hundreds of small kernel launches become
    one, the batch-1 cost on a GPU. For states of fixed size (every recurrent mixer); the graph reads the token
    and the state from static buffers and writes the logits and the next state into them, so a call returns
    those buffers (valid until the next call; ``sample`` consumes them before it). The graph holds the weights
    and cached inference constants as they are at capture: build one per generation (``sample`` does)."""

    def __init__(self, model, tokens: torch.Tensor, state: list):
        device = tokens.device
        self.tokens, self.state = tokens.clone(), map_state(torch.clone, state)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm up off the capture stream (library handles, inference caches)
            for _ in range(2):
                model.decode(self.tokens, self.state)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits, new_state = model.decode(self.tokens, self.state)
            _copy_state(self.state, new_state)

    def __call__(self, tokens: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        if state is not self.state:
            _copy_state(self.state, state)
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits, self.state


def _copy_state(into, source) -> None:
    flat_into, flat_source = [], []
    map_state(flat_into.append, into)
    map_state(flat_source.append, source)
    for a, b in zip(flat_into, flat_source, strict=True):
        if a is not b:
            a.copy_(b)


def compiled_decoder(model) -> "CompiledDecoder":
    """The model's ``CompiledDecoder``, built once per model (kept on it)."""
    decoder = model.__dict__.get("_compiled_decoder")
    if decoder is None:
        decoder = model.__dict__["_compiled_decoder"] = CompiledDecoder(model)
    return decoder


class _DecodeStep(nn.Module):
    """model.decode as a module's forward, so that torch.func.functional_call can swap weights for a call."""

    def __init__(self, model):
        super().__init__()
        self.lm = model

    def forward(self, tokens, state):
        return self.lm.decode(tokens, state)


class CompiledDecoder:
    """``model.decode`` compiled by torch.compile (inductor: C++ kernels and a C++ wrapper on CPU), falling back
    to ``model.decode`` with a warning where it cannot compile (no C++ compiler). ``sample`` uses it where the
    faster steps do not apply: a growing state on CUDA, a state that grows otherwise than by one position
    (BST), or where the ``ExportedDecoder`` / ``CudaGraphStep`` could not be built.

    The whole step is one graph (``fullgraph``). A shape that changes from call to call (attention's KV cache,
    the batch size) compiles once more as a dynamic size, then never again. Every ``Linear``
    weight enters the graph as an input: its cached transposed copy (see ``seqmix.layers.Linear``), passed as
    the [out, in] weight through ``functional_call``, so the one-row products stream it in the fast layout.
    ``bind()`` takes those copies, refreshed if the weights changed, for one generation. Guards on module
    attributes are skipped: the other parameters are read at every call, so in-place updates are seen, but
    replacing a submodule needs a new model object. Compiling takes seconds to a minute; it pays off over
    long generations (``seqmix bench --suite generate --compile`` times both).
    """

    def __init__(self, model):
        self.model, self.failed = model, False
        # dynamo counts compiled variants per function, shared by every model: each adds about two (the state
        # after the prefill and after a step differ in strides), and one process may decode with many models
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 1024)
        self.linears = {f"lm.{name}.weight": module for name, module in model.named_modules()
                        if isinstance(module, Linear) and module.weight is not getattr(model.embed, "weight", None)}
        options = {"cpp_wrapper": True, "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
        self.compiled = {dynamic: torch.compile(self._step, fullgraph=True, dynamic=dynamic, options=options)
                         for dynamic in (False, None)}  # static shapes, or sizes made dynamic once they change
        self.wrapper = _DecodeStep(model)

    def _step(self, weights, tokens, state):
        return functional_call(self.wrapper, weights, (tokens, state), strict=False)

    def bind(self, tokens: torch.Tensor, state: list, grows: bool | None = None) -> Callable:
        """step(tokens, state) -> (logits, state) with the weights as they are now (no graph recorded), for
        states like `state` after `tokens`. A state that grows (a KV cache; None = find out with one eager
        step) is compiled with dynamic sizes, a state of fixed size with static shapes (faster)."""
        with torch.no_grad():
            weights = {name: linear.inference_weight().t() for name, linear in self.linears.items()}
            if grows is None:
                grows = _shapes(state) != _shapes(self.model.decode(tokens, state)[1])
        compiled = self.compiled[None if grows else False]

        def step(tokens, state):
            if not self.failed:
                try:
                    return compiled(weights, tokens, state)
                except Exception as error:  # inductor raises several types for a missing or broken toolchain
                    self.failed = True
                    first = str(error).splitlines()[0] if str(error) else ""
                    warnings.warn(f"torch.compile could not build the decode step ({type(error).__name__}: {first}); "
                                  "decoding uncompiled", RuntimeWarning, stacklevel=2)
            return self.model.decode(tokens, state)
        return step


class TextStream:
    """Turns token ids into text as they come, never splitting a character: each ``push`` returns only the text
    that is final (a trailing incomplete UTF-8 sequence, decoded as U+FFFD, is held back); ``close`` returns
    the rest. Works with any tokenizer whose ``decode`` maps ids to text (bytes or subwords)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.sent = tokenizer, [], 0

    def push(self, ids: Sequence[int]) -> str:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids)
        final = len(text.rstrip("\ufffd"))
        piece, self.sent = text[self.sent:final], max(self.sent, final)
        return piece

    def close(self) -> str:
        text = self.tokenizer.decode(self.ids)
        piece, self.sent = text[self.sent:], len(text)
        return piece


def generate(model, prompt: str | Sequence[str], max_new_tokens: int = 200, *, temperature: float = 1.0,
             top_k: int | None = None, seed: int | None = None, tokenizer=None,
             stream: Callable[[str], None] | None = None, compile: bool = False,
             timings: dict | None = None) -> str | list[str]:
    """The model's continuation of ``prompt`` (text; the continuation only), or of each of several prompts.

    Several prompts are decoded together, in one batch per prompt length in tokens (a recurrent state has no
    padding). ``tokenizer``: anything with ``encode(text) -> ids`` and ``decode(ids) -> text`` (a
    transformers tokenizer works); None = bytes, for byte-level models. ``stream``: called with each piece of
    text as soon as it is final (one prompt only). ``timings`` sums ``sample``'s over the batches.
    """
    tokenizer = ByteTokenizer() if tokenizer is None else tokenizer
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("give at least one prompt")
    if stream is not None and len(prompts) > 1:
        raise ValueError(f"stream= prints one continuation as it is produced; got {len(prompts)} prompts")
    ids = [tokenizer.encode(p) for p in prompts]
    if not all(ids):
        raise ValueError("prompt must not be empty: the model needs at least one token to condition on")
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(ids):
        by_length.setdefault(len(p), []).append(i)
    texts: list[str] = [""] * len(prompts)
    for length, members in by_length.items():
        on_token, text_stream = None, None
        if stream is not None:
            text_stream = TextStream(tokenizer)
            on_token = lambda token: stream(text_stream.push(token[0].tolist()))  # noqa: E731
        times: dict = {}
        out = sample(model, torch.tensor([ids[i] for i in members]), max_new_tokens, temperature=temperature,
                     top_k=top_k, seed=seed, timings=times, on_token=on_token, compile=compile)
        if text_stream is not None:
            stream(text_stream.close())
        for row, i in enumerate(members):
            texts[i] = tokenizer.decode(out[row].tolist())
        if timings is not None:
            for key, value in times.items():
                timings[key] = timings.get(key, 0.0) + value
    return texts[0] if isinstance(prompt, str) else texts

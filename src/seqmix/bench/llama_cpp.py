"""seqmix against llama.cpp, decoding the same transformers Mamba (or Mamba-2) with the same weights.

``seqmix bench --suite decode --llama-cpp PATH``. llama.cpp is a benchmark peer that the user installs, never a
dependency of seqmix, like the official TTT code:

* the library: ``pip install llama-cpp-python`` (it builds llama.cpp from source), imported only here and only
  when asked for;
* the converter: llama.cpp's ``convert_hf_to_gguf.py`` (PATH: the script, or a llama.cpp checkout that holds it;
  the llama-cpp-python sdist carries the one matching its library under ``vendor/llama.cpp``), run as a
  separate process with this Python (it needs torch, transformers, numpy and its ``gguf-py``, or ``pip install
  gguf``). Nothing of llama.cpp is copied into seqmix.

For each size, a random transformers ``MambaForCausalLM`` (fixed seed; the embedding N(0, 0.02²) and every other
matrix N(0, 1/fan_in), so that greedy decoding does not just repeat the last token as a random tied embedding
makes it do) is saved, converted by llama.cpp's script to GGUF in float32 and float16, and converted to seqmix
by ``seqmix.interop.from_transformers``. At each thread count, in interleaved rounds (round 0 warms up and
compiles), every engine decodes greedily after the same 16-token prompt:

* llama.cpp: its C API through llama-cpp-python's ctypes bindings, one ``llama_decode`` per token and the argmax
  of the last logits in numpy (no copy), ``n_threads`` = ``n_threads_batch`` = the thread count;
* seqmix: ``seqmix.model.generate.sample`` (greedy), eager and (``compile``) compiled, under
  ``torch.set_num_threads``;
* transformers: the model's own ``generate`` (greedy), timed from the first new token to the last.

Time per token is decoding only, the prompt excluded: N argmaxes and N − 1 steps over N, as
``sample``'s ``decode_seconds``. Each engine's tokens are compared with llama.cpp float32's (the count of equal
leading tokens: random models have near-ties, so a late divergence is reported, not fatal). The memory floor is
the float32 weights and the state read once at the one-read bandwidth measured with that many threads.
"""
from __future__ import annotations

import importlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from seqmix.bench.harness import _cpu_ticks, _own_ticks, measure_read_bandwidth
from seqmix.bench.suites import state_bytes

CONVERTER = "convert_hf_to_gguf.py"
INSTALL = ("install the peer with `pip install llama-cpp-python` (it builds llama.cpp from source: a C++ compiler "
           "and CMake are needed; CMAKE_BUILD_PARALLEL_LEVEL=2 sets the build's jobs)")
MIXERS = ("mamba", "mamba2")  # the transformers classes both seqmix's and llama.cpp's converters take
PROMPT_TOKENS = 16
VARIANTS = ("llama.cpp f32", "llama.cpp f16", "seqmix eager", "seqmix compiled", "transformers")


def find_converter(path: str | os.PathLike) -> Path:
    """llama.cpp's convert_hf_to_gguf.py at `path` (the script itself, or a directory holding it)."""
    path = Path(path).expanduser()
    script = path / CONVERTER if path.is_dir() else path
    if script.name != CONVERTER or not script.is_file():
        raise FileNotFoundError(
            f"--llama-cpp {path}: no {CONVERTER} there; pass llama.cpp's {CONVERTER} or a checkout of "
            f"github.com/ggml-org/llama.cpp that holds it (the llama-cpp-python sdist, `pip download --no-binary "
            f":all: --no-deps llama-cpp-python`, has the one matching its library under vendor/llama.cpp)")
    return script.resolve()


def import_llama_cpp():
    """The llama_cpp module (llama-cpp-python), its logging silenced, or an ImportError saying how to get it."""
    try:
        llama_cpp = importlib.import_module("llama_cpp")
    except ImportError as exc:
        raise ImportError(f"--llama-cpp: the llama_cpp module (llama-cpp-python) cannot be imported ({exc}); "
                          f"{INSTALL}") from exc
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its log callback prints what passes this
    return llama_cpp


def _random_weights(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and name.endswith("weight"):
                std = 0.02 if "embed" in name else p.shape[1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def build_hf_model(mixer: str, d_model: int, n_layers: int, vocab: int, seed: int = 0):
    """A random transformers MambaForCausalLM / Mamba2ForCausalLM with tied embeddings (as mamba-130m)."""
    import transformers

    torch.manual_seed(seed)
    if mixer == "mamba":
        config = transformers.MambaConfig(vocab_size=vocab, hidden_size=d_model, num_hidden_layers=n_layers,
                                          state_size=16, tie_word_embeddings=True)
        model = transformers.MambaForCausalLM(config)
    elif mixer == "mamba2":
        config = transformers.Mamba2Config(vocab_size=vocab, hidden_size=d_model, num_hidden_layers=n_layers,
                                           head_dim=64, num_heads=2 * d_model // 64, n_groups=1, state_size=128,
                                           tie_word_embeddings=True)
        model = transformers.Mamba2ForCausalLM(config)
    else:
        raise ValueError(f"--mixers {mixer!r}: the llama.cpp comparison takes {list(MIXERS)}")
    _random_weights(model, seed)
    return model.float().eval()


def _quiet_save(model, directory: Path) -> None:
    """save_pretrained without transformers' progress bar."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(directory)
    finally:
        if was:
            hf_logging.enable_progress_bar()


def convert_to_gguf(converter: Path, hf_dir: Path, outfile: Path, outtype: str) -> Path:
    """Run llama.cpp's converter on a saved transformers model (a separate process, this Python)."""
    command = [sys.executable, str(converter), str(hf_dir), "--outtype", outtype, "--outfile", str(outfile)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not outfile.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"llama.cpp's converter failed (exit {done.returncode}): {' '.join(command)}\n{tail}")
    return outfile


class LlamaCppGreedy:
    """A GGUF model in llama.cpp with one context; ``greedy(prompt, n)`` decodes n tokens greedily."""

    def __init__(self, llama_cpp, gguf: Path, threads: int, n_ctx: int):
        self.lib = llama_cpp
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), llama_cpp.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp (llama-cpp-python {getattr(llama_cpp, '__version__', '?')}) cannot load "
                               f"{gguf}: use the converter of the same llama.cpp version as the library (the "
                               "llama-cpp-python sdist's vendor/llama.cpp/convert_hf_to_gguf.py)")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_threads = params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise RuntimeError(f"llama.cpp could not create a context for {gguf}")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.one = (llama_cpp.llama_token * 1)()

    def _decode(self, tokens, n: int) -> None:
        code = self.lib.llama_decode(self.ctx, self.lib.llama_batch_get_one(tokens, n))
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def _argmax(self) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
        return int(logits.argmax())

    def greedy(self, prompt: Sequence[int], n: int, timings: dict | None = None) -> list[int]:
        """Clear the state, eval the prompt, then n greedy tokens; timings["decode_seconds"] excludes the prompt."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        self._decode((self.lib.llama_token * len(prompt))(*prompt), len(prompt))
        start = time.perf_counter()
        out = []
        for i in range(n):
            token = self._argmax()
            out.append(token)
            if i + 1 < n:
                self.one[0] = token
                self._decode(self.one, 1)
        if timings is not None:
            timings["decode_seconds"] = time.perf_counter() - start
        return out

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None


class _Stamps:
    """A transformers streamer that only records when each chunk of tokens arrives (the prompt first)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_greedy(model, prompt: torch.Tensor, n: int, timings: dict | None = None) -> list[int]:
    """transformers' own generate, greedy, n tokens exactly; decode_seconds from the first new token to the last,
    scaled by n / (n − 1) to count as n tokens like the others."""
    stamps = _Stamps()
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, streamer=stamps, pad_token_id=0)
    if timings is not None:
        new = stamps.times[1:]  # times[0]: the prompt, put before anything runs
        timings["decode_seconds"] = (new[-1] - new[0]) * n / max(1, n - 1)
    return out[0, prompt.shape[1]:].tolist()


def leading_agreement(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two greedy decodings share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def llama_cpp_decode_suite(converter: Path, mixers: Sequence[str], sizes: Sequence[tuple[int, int, int]],
                           threads: Sequence[int], new_tokens: int, rounds: int, compile: bool = True,
                           with_transformers: bool = True, progress: Callable[[dict], None] | None = None,
                           workdir: Path | None = None) -> list[dict]:
    """Rows, one per (mixer, size, thread count, variant): us_per_token (median), round_us, tokens, agree (leading
    tokens equal to llama.cpp f32's), floor_us and the measured read_gbs, other_cpu (the share of the machine's
    CPU other processes used while timing). `sizes`: (d_model, n_layers, vocab)."""
    from seqmix.interop import from_transformers
    from seqmix.model.generate import sample

    converter = find_converter(converter)
    llama_cpp = import_llama_cpp()
    if new_tokens < 2 or rounds < 1:
        raise ValueError(f"--new-tokens {new_tokens}, --rounds {rounds}: need at least 2 tokens and 1 round")
    left_out = {"seqmix compiled": not compile, "transformers": not with_transformers}
    variants = [v for v in VARIANTS if not left_out.get(v)]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="seqmix-llama-cpp-", dir=workdir) as tmp:
        for mixer in mixers:
            for d_model, n_layers, vocab in sizes:
                hf = build_hf_model(mixer, d_model, n_layers, vocab)
                hf_dir = Path(tmp) / f"{mixer}-{d_model}x{n_layers}"
                _quiet_save(hf, hf_dir)
                ggufs = {dtype: convert_to_gguf(converter, hf_dir, hf_dir.with_suffix(f".{dtype}.gguf"), dtype)
                         for dtype in ("f32", "f16")}
                ours = from_transformers(hf)
                weight_bytes = sum(t.numel() * t.element_size() for t in (*ours.parameters(), *ours.buffers()))
                state = state_bytes(ours.init_state(1))
                prompt = torch.randint(0, vocab, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
                for n_threads in threads:
                    torch.set_num_threads(n_threads)
                    read_gbs = measure_read_bandwidth()
                    llamas = {dtype: LlamaCppGreedy(llama_cpp, path, n_threads, PROMPT_TOKENS + new_tokens + 8)
                              for dtype, path in ggufs.items()}
                    runs = {"llama.cpp f32": lambda t: llamas["f32"].greedy(prompt[0].tolist(), new_tokens, t),
                            "llama.cpp f16": lambda t: llamas["f16"].greedy(prompt[0].tolist(), new_tokens, t),
                            "seqmix eager": lambda t: sample(ours, prompt, new_tokens, temperature=0,
                                                             timings=t)[0].tolist(),
                            "seqmix compiled": lambda t: sample(ours, prompt, new_tokens, temperature=0, timings=t,
                                                                compile=True)[0].tolist(),
                            "transformers": lambda t: hf_greedy(hf, prompt, new_tokens, t)}
                    seconds = {v: [] for v in variants}
                    tokens: dict[str, list[int]] = {}
                    compile_seconds = None
                    try:
                        for r in range(rounds + 1):  # round 0 warms up (and compiles); its tokens are compared
                            if r == 1:
                                busy0, total0, own0 = *_cpu_ticks(), _own_ticks()
                            for v in variants:
                                t: dict = {}
                                got = runs[v](t)
                                if r == 0:
                                    tokens[v] = got
                                    compile_seconds = t.get("compile_seconds", compile_seconds)
                                else:
                                    seconds[v].append(t["decode_seconds"] / new_tokens)
                        busy1, total1 = _cpu_ticks()
                    finally:
                        for llama in llamas.values():
                            llama.close()
                    others = max(0, (busy1 - busy0) - (_own_ticks() - own0))
                    other_cpu = others / (total1 - total0) if total1 > total0 else 0.0
                    floor_us = (weight_bytes + state) / (read_gbs * 1e9) * 1e6
                    for v in variants:
                        row = {"suite": "decode_llama_cpp", "mixer": mixer, "d_model": d_model, "n_layers": n_layers,
                               "vocab": vocab, "threads": n_threads, "variant": v, "new_tokens": new_tokens,
                               "us_per_token": statistics.median(seconds[v]) * 1e6,
                               "round_us": [s * 1e6 for s in seconds[v]],
                               "tokens": tokens[v], "agree": leading_agreement(tokens[v], tokens["llama.cpp f32"]),
                               "param_bytes": weight_bytes, "state_bytes": state, "read_gbs": read_gbs,
                               "floor_us": floor_us, "other_cpu": other_cpu,
                               "compile_seconds": compile_seconds if v == "seqmix compiled" else None,
                               "gguf_bytes": ggufs[v[-3:]].stat().st_size if v.startswith("llama.cpp") else None}
                        rows.append(row)
                        if progress:
                            progress(row)
                ours = hf = None  # free both before the next size is built
    return rows


def llama_cpp_version() -> str | None:
    try:
        return importlib.import_module("llama_cpp").__version__
    except (ImportError, AttributeError):
        return None

"""A product kernel for decoding on CPU: y = x Wᵀ (+ b) for a few rows x (one token per sequence), float32.

torch's BLAS streams a weight that does not fit in cache at 11–18 GB/s in a one-row product on this machine's
cores, below the 24 GB/s a plain read reaches; the decode step of a mid-size model is mostly such products.
``few_rows.cpp`` reads each weight as one sequential stream (a [in, out] copy for wide outputs, the [out, in]
weight itself for narrow ones) and splits the outputs between threads; see it for the layouts.

It is compiled on first use with the C++ compiler that ``torch._inductor`` uses (the ahead-of-time decode step
needs it anyway), for this machine's instruction set (``-march=native``), into a cache folder keyed by the
source, the flags, the compiler and torch's version, and loaded as the operator ``torch.ops.seqmix.few_rows_linear``.
Where it cannot be built (no compiler), ``available()`` says so once, with the reason, and decoding uses torch's
products. It is used inside ``seqmix.model.generate.ExportedDecoder`` (``sample(compile=True)``): ``in_use()``
turns it on for ``seqmix.layers.Linear`` while the decode step is exported.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import warnings

import torch

SOURCE = pathlib.Path(__file__).with_name("few_rows.cpp")
MAX_ROWS = 4  # up to this many rows (batch × tokens) a product runs on the kernel; more go to torch's GEMM
MIN_WEIGHT = 65536  # elements (256 KB in float32): smaller weights stay in cache, where torch's BLAS is as fast
_status: dict = {}  # "ok": bool, "reason": str, once per process
_active = [False]


def _compiler() -> str:
    from torch._inductor.cpp_builder import get_cpp_compiler
    return get_cpp_compiler()


def _command(compiler: str, source: pathlib.Path, target: pathlib.Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths, library_paths
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    native = [] if sys.platform == "darwin" else ["-march=native"]
    return [compiler, "-O3", *native, "-fopenmp", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            *(f"-I{p}" for p in include_paths()), str(source), "-o", str(target),
            *(f"-L{p}" for p in library_paths()), "-lc10", "-ltorch_cpu", "-ltorch",
            *(f"-Wl,-rpath,{p}" for p in library_paths())]


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "seqmix" / "kernels"


def _build() -> pathlib.Path:
    """The compiled library for this source, flags, compiler and torch (compiled if not in the cache)."""
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(_command(compiler, SOURCE, SOURCE)), version,
                                    torch.__version__, torch.backends.cpu.get_cpu_capability()]).encode())
    target = _cache_dir() / f"few_rows_{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as folder:  # built aside, then moved in at once
            built = pathlib.Path(folder) / target.name
            result = subprocess.run(_command(compiler, SOURCE, built), capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
            os.replace(built, target)
    return target


def available() -> bool:
    """Whether ``torch.ops.seqmix.few_rows_linear`` is loaded (built on the first call; a failure is reported
    once, with a warning naming the reason, and not retried in this process)."""
    if "ok" not in _status:
        try:
            torch.ops.load_library(str(_build()))
            torch.library.register_fake("seqmix::few_rows_linear")(_shape)
            _status.update(ok=True, reason="")
        except Exception as error:  # no compiler, no headers, a failed compile: torch's products instead
            _status.update(ok=False, reason=f"{type(error).__name__}: {error}")
            warnings.warn(f"seqmix: the few-row product kernel could not be built ({_status['reason']}); "
                          "decoding uses torch's matrix products instead", RuntimeWarning, stacklevel=2)
    return _status["ok"]


def _shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel takes this product: turned on (``in_use``), float32 on CPU, at most ``MAX_ROWS`` rows
    and a weight of at least ``MIN_WEIGHT`` elements (measured here: with 8 rows torch's GEMM is faster over a
    [512, 1024] weight, and over an [80, 320] one, which stays in cache, by about 1 µs at any row count)."""
    return (_active[0] and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.numel() <= MAX_ROWS * x.shape[-1] and weight.numel() >= MIN_WEIGHT)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x weightᵀ + bias, x [..., in], weight [out, in] contiguous or the transpose of a contiguous [in, out]."""
    return torch.ops.seqmix.few_rows_linear(x, weight, bias)


def prefers_transposed(out_features: int, in_features: int) -> bool:
    """Which weight layout the kernel streams fastest: [in, out] for wide outputs, [out, in] for narrow ones
    (weights too small for the kernel keep the [in, out] copy torch's BLAS streams best)."""
    return 2 * out_features > in_features or out_features * in_features < MIN_WEIGHT


@contextlib.contextmanager
def in_use():
    """Products of few rows in ``seqmix.layers.Linear`` run on the kernel inside this block (when it is built)."""
    previous, _active[0] = _active[0], available()
    try:
        yield
    finally:
        _active[0] = previous

"""Timing harness: warm-up, interleaved rounds, median and spread, contention, and the machine's roofline.

Speeds are reported next to the same run's measured limits (fp32 matmul GFLOP/s and memory bandwidth),
so a number survives host noise: a ratio to the roof is comparable across runs, an absolute time less so.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat (0, 0 where unavailable)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _own_ticks() -> int:
    t = os.times()
    return int((t.user + t.system + t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK"))


@dataclass
class Timing:
    """Seconds per call over repeated rounds."""

    samples: list[float] = field(default_factory=list)
    other_cpu_share: float = 0.0  # fraction of the machine's CPU used by other processes while timing

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        """(25th, 75th) percentile."""
        if len(self.samples) < 2:
            return self.median, self.median
        q = statistics.quantiles(self.samples, n=4)
        return q[0], q[2]


def time_block(fn: Callable[[], object], min_time: float) -> float:
    """Mean seconds per call over a block of calls lasting at least `min_time`."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def fastest_block(fn: Callable[[], object], min_time: float, blocks: int = 3) -> float:
    """Seconds per call of the fastest of `blocks` blocks lasting at least `min_time / blocks` each.

    On a shared machine, interference only ever adds time, so the fastest block is the steadiest estimate of
    what the code costs; the arena's spread over rounds then shows the drift that is left.
    """
    return min(time_block(fn, min_time / blocks) for _ in range(blocks))


def time_interleaved(candidates: dict[str, Callable[[], object]], rounds: int = 5, min_time: float = 0.2,
                     warmup: int = 1) -> dict[str, Timing]:
    """Time candidates A B C A B C ... so slow drifts of the machine hit all of them alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    results = {name: Timing() for name in candidates}
    busy0, total0 = _cpu_ticks()
    own0 = _own_ticks()
    for _ in range(rounds):
        for name, fn in candidates.items():
            results[name].samples.append(time_block(fn, min_time))
    busy1, total1 = _cpu_ticks()
    others = max(0, (busy1 - busy0) - (_own_ticks() - own0))
    share = others / (total1 - total0) if total1 > total0 else 0.0
    for t in results.values():
        t.other_cpu_share = share
    return results


@dataclass
class Roofline:
    matmul_gflops: float  # fp32, n×n×n
    bandwidth_gbs: float  # bytes read + written per second by a large copy
    threads: int

    def compute_fraction(self, flops: float, seconds: float) -> float:
        return flops / seconds / 1e9 / self.matmul_gflops

    def bandwidth_fraction(self, nbytes: float, seconds: float) -> float:
        return nbytes / seconds / 1e9 / self.bandwidth_gbs


def measure_roofline(n: int = 1024, copy_mib: int = 256, min_time: float = 0.5) -> Roofline:
    """Measure fp32 matmul GFLOP/s and copy bandwidth with the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    src = torch.empty(copy_mib * 2**20 // 4)
    dst = torch.empty_like(src)
    t = time_interleaved({"mm": lambda: a @ b, "copy": lambda: dst.copy_(src)}, rounds=3, min_time=min_time)
    return Roofline(matmul_gflops=2 * n**3 / t["mm"].median / 1e9,
                    bandwidth_gbs=2 * src.numel() * 4 / t["copy"].median / 1e9,
                    threads=torch.get_num_threads())


def measure_read_bandwidth(mib: int = 256, rounds: int = 5, device: str = "cpu") -> float:
    """GB/s of reading a large float32 tensor once, with the current thread count: the faster of a sum over it
    and a one-row product with it as a [1024, n] matrix (the fastest of `rounds` each). The rate at which a
    decoding step can at best stream weights that do not fit in cache."""
    x = torch.ones(mib * 2**20 // 4, device=device)
    row, matrix = torch.ones(1, 1024, device=device), x.view(1024, -1)
    seconds = min(time_block(synchronised(fn, device), 0.0) for fn in (x.sum, lambda: row @ matrix)
                  for _ in range(rounds))
    return x.numel() * 4 / seconds / 1e9


def synchronised(fn: Callable[[], object], device: str | torch.device) -> Callable[[], object]:
    """`fn` followed by waiting for the device to finish it (CUDA runs asynchronously); `fn` itself on CPU."""
    if torch.device(device).type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return call


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}

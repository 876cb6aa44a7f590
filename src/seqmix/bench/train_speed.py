"""Training throughput with and without torch.compile (``seqmix bench --suite train``).

Each entrant is a whole language model trained by the same step as ``seqmix train`` (forward, summed cross
entropy / targets, backward, AdamW): one copy eager, one copy through torch.compile, same initial weights.
Their first-step losses are compared before anything is timed; then steps are timed interleaved (eager,
compiled, eager, ...), and throughput is ``batch · seq_len / seconds per step``.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import torch
import torch.nn.functional as F

from seqmix.bench.harness import time_interleaved
from seqmix.model import ModelConfig, SeqMixLM
from seqmix.train.compiled import compiler_problem


def _step_fn(model: torch.nn.Module, forward: Callable, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> float:
        logits = forward(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def train_compile_suite(mixers: list[str], d_model: int, n_layers: int, n_heads: int, batch: int, seq_len: int,
                        rounds: int, min_time: float, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per mixer: tokens/s eager and compiled (median and range over rounds), the speed-up, the
    seconds the first compiled step took (building the kernels), and the first step's loss difference."""
    problem = compiler_problem(torch.device("cpu"))
    if problem is not None:
        raise RuntimeError(f"bench --suite train compares torch.compile with eager: {problem}")
    rows = []
    for mixer in mixers:
        torch.manual_seed(0)
        eager_model = SeqMixLM(ModelConfig(mixer=mixer, d_model=d_model, n_layers=n_layers, n_heads=n_heads))
        compiled_model = copy.deepcopy(eager_model)
        tokens = torch.randint(0, 256, (batch, seq_len + 1), generator=torch.Generator().manual_seed(1))
        x, y = tokens[:, :-1], tokens[:, 1:]
        eager = _step_fn(eager_model, eager_model, x, y)
        compiled = _step_fn(compiled_model, torch.compile(compiled_model), x, y)
        started = time.perf_counter()
        compiled_loss = compiled()  # builds the kernels
        compile_s = time.perf_counter() - started
        eager_loss = eager()
        timings = time_interleaved({"eager": eager, "compiled": compiled}, rounds=rounds, min_time=min_time)
        per_step = {k: t.median for k, t in timings.items()}
        row = {"suite": "train", "mixer": mixer, "d_model": d_model, "n_layers": n_layers, "batch": batch,
               "seq_len": seq_len, "compile_s": compile_s,
               "first_loss_relative_difference": abs(compiled_loss - eager_loss) / abs(eager_loss),
               "other_cpu": timings["eager"].other_cpu_share, "speedup": per_step["eager"] / per_step["compiled"]}
        for k, t in timings.items():
            row[f"{k}_tokens_per_s"] = batch * seq_len / t.median
            row[f"{k}_round_tokens_per_s"] = [batch * seq_len / s for s in t.samples]
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows

"""The arena's units of work. Each cell is a pure function of its settings, returns a JSON-able dict, and
is cached by key (cache.py), so an interrupted or repeated arena recomputes nothing that finished.

* lm: train one language model with one seed, then bits per byte, loss by position and length
  generalisation on held-out works (training itself checkpoints, so a killed cell resumes mid-way);
* recall / prompt_order: train to convergence on a recall task (arena/recall.py) and test;
* speed / generation: one timing round of one entrant, in a fresh process (arena/speed.py);
* ttt_forms, kan, theorem1: TTT's dual vs primal form, KAN vs MLP, Theorem 1's deviation.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from seqmix.arena.plan import Arch
from seqmix.arena.presets import KANSettings, LMSettings, PromptOrderSettings, RecallSettings, SpeedSettings
from seqmix.arena.recall import RecallData, train_recall
from seqmix.bench.kan_vs_mlp import count_parameters, matched_mlp
from seqmix.bench.suites import ttt_forms_suite
from seqmix.data.prepare import open_corpus
from seqmix.data.tokenizer import TOKENIZER_FILE
from seqmix.data.mqar import multiquery_ar, prompt_order_recall
from seqmix.eval import evaluate
from seqmix.ffn.kan import KAN
from seqmix.model import ModelConfig, SeqMixLM
from seqmix.ops import linear_attention, ttt
from seqmix.train import TrainConfig, train
from seqmix.train.checkpoint import latest

LN2 = math.log(2)


def _position_curve(loss_by_position: list[float], points: int = 24) -> dict:
    """Average per-position losses over log-spaced position bins (plots and tables want tens of points)."""
    n = len(loss_by_position)
    edges = sorted({0, n} | {int(round(e)) for e in np.geomspace(1, n, points)})
    pos, bpb = [], []
    for a, b in zip(edges, edges[1:]):
        pos.append(b)  # the bin's last position, 1-based: "with up to b bytes of context"
        bpb.append(float(np.mean(loss_by_position[a:b])))
    return {"positions": pos, "bpb": bpb}


def lm_cell(arch: Arch, d_model: int, lm: LMSettings, workdir, seed: int = 0, data: dict | None = None,
            progress=None) -> dict:
    """Train on the training split with the preset's recipe and `seed`; evaluate on validation and test.
    ``data`` (``arena.data.describe_data``): the corpus and tokenizer; None: Shakespeare in bytes."""
    data = data or {"corpus": None, "tokenizer": "bytes", "vocab_size": 256}
    model_cfg = arch.config(d_model, lm.n_layers, lm.n_heads, data["vocab_size"])
    steps = max(1, lm.train_tokens // (lm.batch_size * lm.seq_len))
    if data.get("tokenizer_json") is not None:  # the arena's tokenizer, not one trained again in this cell
        (workdir / TOKENIZER_FILE).write_text(data["tokenizer_json"], encoding="utf-8")
    config = TrainConfig(model=model_cfg, corpus=data["corpus"], tokenizer=data["tokenizer"], steps=steps,
                         batch_size=lm.batch_size, seq_len=lm.seq_len, lr=lm.lr,
                         warmup_steps=max(1, steps // 10), eval_interval=steps + 1, eval_bytes=lm.seq_len,
                         final_eval_bytes=lm.seq_len, checkpoint_interval=max(1, steps // 4),
                         log_interval=max(1, steps // 50), out_dir=str(workdir), seed=seed)
    result = train(config, resume=latest(workdir / "checkpoints") is not None, quiet=True, progress=progress)
    model = result["model"].eval()
    corpus = open_corpus(data["corpus"], data["tokenizer"], workdir)
    budget = lm.eval_windows * lm.eval_len
    at_L = evaluate(model, corpus["validation"], lm.seq_len, max_bytes=budget)
    at_4L = evaluate(model, corpus["validation"], 4 * lm.seq_len, max_bytes=budget)
    test = evaluate(model, corpus["test"], lm.seq_len, max_bytes=budget)
    long = evaluate(model, corpus["validation"], lm.eval_len, max_bytes=budget)
    curve = [(r["tokens"], r["loss"] / LN2) for r in result["history"] if r["kind"] == "train"]
    train_s = result["elapsed_s"]
    return {"arch": arch.name, "seed": seed, "d_model": d_model, "params": result["parameters"],
            "config": model_cfg.to_dict(), "train_seconds": train_s, "train_tokens": result["tokens"],
            "train_tokens_per_s": result["tokens"] / max(train_s, 1e-9), "final_train_bpb": result["train_loss"] / LN2,
            "val_bpb": at_L["bpb"], "test_bpb": test["bpb"], "bpb_at_L": at_L["bpb"], "bpb_at_4L": at_4L["bpb"],
            "eval_bytes": at_L["bytes"], "octaves_at_L": at_L["loss_by_position_buckets"],
            "position": _position_curve(long["loss_by_position"]), "curve": curve}


def recall_model(arch: Arch, width: int, n_layers: int, vocab: int, mixer_conv: int) -> SeqMixLM:
    """Zoology's recall model: no MLP, untied embeddings, a short conv before every mixer, one head where the
    mixer allows it (else the fewest heads it accepts)."""
    last = None
    for heads in (1, 2, 4):
        try:
            config = arch.config(width, n_layers, heads, vocab)
            return SeqMixLM(ModelConfig.from_dict({**config.to_dict(), "ffn": "none", "tie_embeddings": False,
                                                   "mixer_conv": mixer_conv}))
        except ValueError as err:
            last = err
    raise ValueError(f"arena recall: no head count in (1, 2, 4) builds {arch.name} at width {width}: {last}")


def _recall_result(arch: Arch, build, data: RecallData, settings, progress) -> dict:
    result = train_recall(build, data, settings.lrs, settings.probe_steps, settings.max_steps,
                          settings.batch_size, settings.eval_every, settings.target, progress=progress)
    return {"arch": arch.name, **result}


def recall_cell(arch: Arch, width: int, num_kv_pairs: int, rs: RecallSettings, progress=None) -> dict:
    """MQAR at one width and pair count: train (seed 0), validate (seed 5000), test (seed 10000)."""
    gen = dict(vocab_size=rs.vocab_size, input_seq_len=rs.seq_len, num_kv_pairs=num_kv_pairs)
    data = RecallData(multiquery_ar(num_examples=rs.train_examples, seed=0, **gen),
                      multiquery_ar(num_examples=rs.val_examples, seed=5000, **gen),
                      multiquery_ar(num_examples=rs.test_examples, seed=10_000, **gen))
    build = lambda: recall_model(arch, width, rs.n_layers, rs.vocab_size, rs.mixer_conv)  # noqa: E731
    return {"width": width, "num_kv_pairs": num_kv_pairs, **_recall_result(arch, build, data, rs, progress)}


def prompt_order_cell(arch: Arch, announce: bool, ps: PromptOrderSettings, progress=None) -> dict:
    """Recall with the queried keys announced before the context (announce) or not: same pairs, same queries."""
    gen = dict(vocab_size=ps.vocab_size, num_kv_pairs=ps.num_kv_pairs, num_queries=ps.num_queries, announce=announce)
    data = RecallData(prompt_order_recall(num_examples=ps.train_examples, seed=0, **gen),
                      prompt_order_recall(num_examples=ps.val_examples, seed=5000, **gen),
                      prompt_order_recall(num_examples=ps.test_examples, seed=10_000, **gen))
    build = lambda: recall_model(arch, ps.width, ps.n_layers, ps.vocab_size, ps.mixer_conv)  # noqa: E731
    return {"width": ps.width, "announce": announce, **_recall_result(arch, build, data, ps, progress)}


def _in_fresh_process(job: dict, what: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "seqmix.arena.speed", json.dumps(job)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def speed_threads(ss: SpeedSettings) -> int:
    return torch.get_num_threads() if ss.threads is None else ss.threads


def speed_cell(arch: Arch, d_model: int, lm: LMSettings, ss: SpeedSettings, round_index: int) -> dict:
    """One timing round of one entrant, in a fresh process (so its peak memory is this model's alone)."""
    job = {"kind": "speed", "config": arch.config(d_model, lm.n_layers, lm.n_heads).to_dict(),
           "lengths": list(ss.lengths), "max_seconds": ss.max_seconds, "threads": speed_threads(ss),
           "min_time": ss.min_time}
    return {"arch": arch.name, "d_model": d_model, "round": round_index,
            **_in_fresh_process(job, f"speed measurement of {arch.name}")}


def generation_cell(arch: Arch, d_model: int, lm: LMSettings, ss: SpeedSettings, round_index: int) -> dict:
    """Generation throughput through `seqmix.model.generate.sample` at every batch size, in a fresh process."""
    job = {"kind": "generation", "config": arch.config(d_model, lm.n_layers, lm.n_heads).to_dict(),
           "batches": list(ss.generation_batches), "context": ss.generation_context,
           "new_tokens": ss.generation_tokens, "threads": speed_threads(ss), "min_time": ss.min_time}
    return {"arch": arch.name, "d_model": d_model, "round": round_index,
            **_in_fresh_process(job, f"generation throughput of {arch.name}")}


def ttt_forms_cell(ss: SpeedSettings) -> dict:
    """TTT-Linear's inner loop in its dual form against the primal forms, in interleaved rounds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(speed_threads(ss))
    try:
        rows = ttt_forms_suite("ttt_linear", ss.forms_length, ss.forms_d_model, ss.forms_heads, {},
                               rounds=ss.forms_rounds, min_time=ss.forms_min_time)
    finally:
        torch.set_num_threads(threads)
    return {"L": ss.forms_length, "d_model": ss.forms_d_model, "n_heads": ss.forms_heads,
            "forms": {r["form"]: r["round_seconds"] for r in rows}}


def _kan_paper_function(x: torch.Tensor) -> torch.Tensor:
    """The KAN paper's §3.1 toy target, in n inputs: exp(mean_i sin(π x_i²)) (its f(x1..x4) for n = 4)."""
    return torch.exp(torch.sin(torch.pi * x ** 2).mean(-1, keepdim=True))


def kan_cell(ks: KANSettings, seed: int) -> dict:
    """Train a KAN [n, hidden, 1] and an MLP of the same parameter count on the same batches; time only the
    training steps. The two alternate which goes first from seed to seed."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(ks.train_samples + 1024, ks.n_inputs, generator=gen) * 2 - 1
    y = _kan_paper_function(x)
    torch.manual_seed(seed)
    kan = KAN([ks.n_inputs, ks.hidden, 1], grid_range=(-1.0, 1.0))
    models = {"KAN": kan, "MLP": matched_mlp(ks.n_inputs, 1, count_parameters(kan))}
    out = {"seed": seed, "params": {name: count_parameters(m) for name, m in models.items()}}
    for name in (["KAN", "MLP"] if seed % 2 == 0 else ["MLP", "KAN"]):
        model = models[name]
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        order_gen = torch.Generator().manual_seed(seed)
        elapsed = 0.0
        for _ in range(ks.epochs):
            order = torch.randperm(ks.train_samples, generator=order_gen)
            start = time.perf_counter()
            for i in range(0, ks.train_samples, ks.batch_size):
                idx = order[i:i + ks.batch_size]
                loss = F.mse_loss(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            elapsed += time.perf_counter() - start
        with torch.no_grad():
            test_mse = F.mse_loss(model(x[ks.train_samples:]), y[ks.train_samples:]).item()
        out[name] = {"train_seconds": elapsed, "test_rmse": math.sqrt(test_mse)}
    return out


def theorem1_cell(T: int = 64, d: int = 8, heads: int = 2, batch: int = 2) -> dict:
    """TTT with a linear inner model, batch GD over the whole sequence (b = T), η = 1/2 for the paper's loss
    (E = 1 for our ½‖·‖²), W0 = 0 and no layer norm or residual, against un-normalised linear attention on
    [q, 1], [k, 1] (the inner model's bias is one more key feature), in float64 and float32, all three forms."""
    gen = torch.Generator().manual_seed(0)
    out = {"T": T, "d": d}
    for dtype in (torch.float64, torch.float32):
        q, k, v = (torch.randn(batch, heads, T, d, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
        eta, tau = torch.ones(batch, heads, T, dtype=dtype), torch.ones(T, dtype=dtype)
        inner = (tau, (torch.zeros(heads, d + 1, d, dtype=dtype),), torch.ones(heads, d, dtype=dtype),
                 torch.zeros(heads, d, dtype=dtype))
        one = torch.ones(batch, heads, T, 1, dtype=dtype)
        reference, _ = linear_attention.parallel(torch.cat([q, one], -1), torch.cat([k, one], -1), v, normalize=False)
        outputs = {name: getattr(ttt, name)(q, k, v, eta, *inner, mini_batch_size=T, ln_residual=False)[0]
                   for name in ("parallel", "chunked")}
        state, steps = None, []
        for t in range(T):
            z, state = ttt.step(q[:, :, t], k[:, :, t], v[:, :, t], eta[:, :, t], *inner, state=state,
                                mini_batch_size=T, ln_residual=False)
            steps.append(z)
        outputs["step"] = torch.stack(steps, dim=2)
        deviations = {name: ((z - reference).abs().max() / reference.abs().max()).item() for name, z in outputs.items()}
        out[str(dtype).removeprefix("torch.")] = deviations
    return out

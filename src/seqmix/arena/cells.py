"""The arena's units of work. Each cell is a pure function of its settings, returns a JSON-able dict, and
is cached by key (cache.py), so an interrupted or repeated arena recomputes nothing that finished.

* lm: train one language model on the corpus, then evaluate bits per byte, loss by position and length
  generalisation on held-out works (training itself checkpoints, so a killed cell resumes mid-way);
* recall: train and test on MQAR at one width;
* speed: training throughput, prefill, decode and memory vs context, in a fresh process.
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
from seqmix.arena.presets import LMSettings, RecallSettings, SpeedSettings
from seqmix.data import load_corpus
from seqmix.data.mqar import multiquery_ar, recall_accuracy
from seqmix.eval import evaluate
from seqmix.model import SeqMixLM
from seqmix.train import TrainConfig, train
from seqmix.train.checkpoint import latest
from seqmix.train.loop import learning_rate, make_optimizer

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


def lm_cell(arch: Arch, d_model: int, lm: LMSettings, workdir, corpus=None, mixer_options: dict | None = None,
            progress=None, train_tokens: int | None = None) -> dict:
    """Train on the training works with the preset's recipe; evaluate on validation and test works."""
    arch_cfg = Arch(arch.name, arch.mixer, arch.pattern, {**arch.mixer_options, **(mixer_options or {})})
    model_cfg = arch_cfg.config(d_model, lm.n_layers, lm.n_heads)
    tokens = train_tokens or lm.train_tokens
    steps = max(1, tokens // (lm.batch_size * lm.seq_len))
    config = TrainConfig(model=model_cfg, steps=steps, batch_size=lm.batch_size, seq_len=lm.seq_len, lr=lm.lr,
                         warmup_steps=max(1, steps // 10), eval_interval=steps + 1, eval_bytes=lm.seq_len,
                         final_eval_bytes=lm.seq_len, checkpoint_interval=max(1, steps // 4),
                         log_interval=max(1, steps // 50),
                         out_dir=str(workdir), seed=0)
    result = train(config, resume=latest(workdir / "checkpoints") is not None, quiet=True, progress=progress)
    model = result["model"].eval()
    corpus = corpus or load_corpus(None)
    budget = lm.eval_windows * lm.eval_len
    at_L = evaluate(model, corpus["validation"], lm.seq_len, max_bytes=budget)
    at_4L = evaluate(model, corpus["validation"], 4 * lm.seq_len, max_bytes=budget)
    test = evaluate(model, corpus["test"], lm.seq_len, max_bytes=budget)
    long = evaluate(model, corpus["validation"], lm.eval_len, max_bytes=budget)
    curve = [(r["tokens"], r["loss"] / LN2) for r in result["history"] if r["kind"] == "train"]
    train_s = result["elapsed_s"]
    return {"arch": arch.name, "d_model": d_model, "params": result["parameters"], "config": model_cfg.to_dict(),
            "train_seconds": train_s, "train_tokens": result["tokens"],
            "train_tokens_per_s": result["tokens"] / max(train_s, 1e-9), "final_train_bpb": result["train_loss"] / LN2,
            "val_bpb": at_L["bpb"], "test_bpb": test["bpb"], "bpb_at_L": at_L["bpb"], "bpb_at_4L": at_4L["bpb"],
            "eval_bytes": at_L["bytes"], "position": _position_curve(long["loss_by_position"]), "curve": curve}


def _valid_heads(arch: Arch, width: int, n_layers: int, vocab: int, preferred=(1, 2, 4)) -> SeqMixLM:
    last = None
    for heads in preferred:
        try:
            return SeqMixLM(arch.config(width, n_layers, heads, vocab))
        except ValueError as err:
            last = err
    raise ValueError(f"arena recall: no head count in {preferred} builds {arch.name} at width {width}: {last}")


def recall_cell(arch: Arch, width: int, rs: RecallSettings, progress=None) -> dict:
    """MQAR: train on `train_examples` (seeds 0..), test on fresh examples (a disjoint seed)."""
    torch.manual_seed(0)
    model = _valid_heads(arch, width, rs.n_layers, rs.vocab_size)
    gen = dict(vocab_size=rs.vocab_size, input_seq_len=rs.seq_len, num_kv_pairs=rs.num_kv_pairs)
    x_train, y_train = multiquery_ar(num_examples=rs.train_examples, seed=0, **gen)
    x_test, y_test = multiquery_ar(num_examples=rs.test_examples, seed=10_000, **gen)
    steps_per_epoch = math.ceil(rs.train_examples / rs.batch_size)
    total = rs.epochs * steps_per_epoch
    cfg = TrainConfig(model=model.config, steps=total, lr=rs.lr, warmup_steps=max(1, total // 10),
                      weight_decay=0.1, min_lr_ratio=0.0)
    optimizer = make_optimizer(model, cfg)
    start = time.perf_counter()
    step = 0
    model.train()
    for epoch in range(rs.epochs):
        order = torch.randperm(rs.train_examples)
        for i in range(0, rs.train_examples, rs.batch_size):
            idx = order[i:i + rs.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, step / total)
            logits = model(x_train[idx])
            loss = F.cross_entropy(logits.flatten(0, 1), y_train[idx].flatten(), ignore_index=-100)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        if progress:
            progress({"epoch": epoch + 1, "loss": loss.item()})
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(x_test[i:i + 256]) for i in range(0, rs.test_examples, 256)])
    return {"arch": arch.name, "width": width, "params": model.num_parameters(), "n_heads": model.config.n_heads,
            "accuracy": recall_accuracy(logits, y_test), "final_train_loss": loss.item(),
            "train_seconds": time.perf_counter() - start}


def speed_cell(arch: Arch, d_model: int, lm: LMSettings, ss: SpeedSettings) -> dict:
    """Run seqmix.arena.speed in a fresh process (so its peak memory is this model's alone)."""
    job = {"config": arch.config(d_model, lm.n_layers, lm.n_heads).to_dict(), "lengths": list(ss.lengths),
           "train_batch": ss.train_batch, "train_seq_len": ss.train_seq_len, "max_seconds": ss.max_seconds,
           "threads": torch.get_num_threads(), "min_time": ss.min_time}
    proc = subprocess.run([sys.executable, "-m", "seqmix.arena.speed", json.dumps(job)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"speed measurement of {arch.name} failed:\n{proc.stderr[-3000:]}")
    return {"arch": arch.name, "d_model": d_model, **json.loads(proc.stdout.strip().splitlines()[-1])}

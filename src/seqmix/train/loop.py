"""The training loop: AdamW, warm-up + cosine, clipping, a JSONL log, checkpoints and exact resumption.

``train(TrainConfig(...))`` trains a SeqMixLM on random windows of the training split and returns a summary
dict (the trained ``model`` included). With ``out_dir`` it writes::

    <out>/config.json                     the TrainConfig
    <out>/log.jsonl                       one JSON record per log / evaluation step and a final one
    <out>/checkpoints/step_XXXXXXXX/      see seqmix.train.checkpoint

``train(config, resume=True)`` continues from the newest checkpoint (or starts, if there is none yet):
weights, optimiser moments, step (hence the schedule), RNG states and data position are restored, so the
losses after the checkpoint are the ones an uninterrupted run computes, step for step. Without
``resume``, an ``out_dir`` that already holds checkpoints is refused rather than overwritten.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from seqmix.data import BatchSampler, load_corpus
from seqmix.eval import evaluate
from seqmix.model import SeqMixLM
from seqmix.train.checkpoint import Checkpoint, latest, save_checkpoint, step_dir
from seqmix.train.config import TrainConfig

# what must not change between a checkpoint and its resumption (the data stream and the weights' meaning)
RESUME_FIELDS = ("model", "corpus", "batch_size", "seq_len", "seed")


class NonFiniteError(RuntimeError):
    """The loss or the gradient became NaN or Inf (with ``on_nonfinite="stop"``)."""


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """lr · min(1, (step+1)/warmup) · (r + (1 − r)·½(1 + cos π·progress)), progress in [0, 1]."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    r = config.min_lr_ratio
    return config.lr * warm * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (embeddings, projections) only, not on gains and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


def _optimizer_tensors(model, optimizer) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {f"optimizer/{names[id(p)]}/{k}": v if isinstance(v, torch.Tensor) else torch.tensor(v)
            for group in optimizer.param_groups for p in group["params"]
            for k, v in optimizer.state.get(p, {}).items()}


def _load_optimizer(model, optimizer, tensors: dict[str, torch.Tensor]) -> None:
    by_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            name, _, field = key[len("optimizer/"):].rpartition("/")
            by_param.setdefault(name, {})[field] = value
    names = {id(p): n for n, p in model.named_parameters()}
    state_dict = optimizer.state_dict()
    state_dict["state"] = {index: by_param[names[id(p)]]
                           for group, saved in zip(optimizer.param_groups, state_dict["param_groups"])
                           for p, index in zip(group["params"], saved["params"]) if names[id(p)] in by_param}
    optimizer.load_state_dict(state_dict)


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out.update({f"rng/cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _restore(directory: Path, config: TrainConfig, model, optimizer, sampler: BatchSampler) -> tuple[int, int, float]:
    """Load a verified checkpoint into the run's objects -> (step, tokens, elapsed seconds)."""
    ckpt = Checkpoint(directory)  # every file's hash is checked before anything is loaded
    if ckpt.trainer_tensors is None or "train" not in ckpt.config:
        raise ValueError(f"cannot resume {directory}: it holds weights only, no training state")
    saved = TrainConfig.from_dict(ckpt.config["train"])
    changed = [f for f in RESUME_FIELDS if getattr(saved, f) != getattr(config, f)]
    if changed:
        raise ValueError(f"cannot resume {directory}: {', '.join(changed)} differ from the checkpoint's "
                         f"({', '.join(f'{f}={getattr(saved, f)!r}' for f in changed)})")
    ckpt.load_weights(model)
    _load_optimizer(model, optimizer, ckpt.trainer_tensors)
    _restore_rng(ckpt.trainer_tensors)
    sampler.load_state_dict(ckpt.meta["data"])
    return ckpt.meta["step"], ckpt.meta["tokens"], ckpt.meta["elapsed_s"]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("TrainConfig.device='cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


class _Log:
    """The JSONL log. On resume, records after the checkpoint's step, and the final record of an earlier
    finished run, are dropped: the resumed run writes them again."""

    def __init__(self, path: Path | None, keep_until_step: int | None):
        self.path = path
        if path is None:
            return
        kept = []
        if keep_until_step is not None and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= keep_until_step
                    and json.loads(line)["kind"] != "done"]
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)

    def write(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def train(config: TrainConfig, *, resume: bool = False, quiet: bool = False,
          progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``config.model`` and return a summary: ``model``, ``steps``, ``tokens``, ``elapsed_s``
    (training time, all sessions of a resumed run), ``train_loss`` (last step, nats), ``val_bpb`` and ``val``
    (the evaluate() dict on ``final_eval_bytes`` of the validation split), ``stopped_by`` ("steps" or
    "time_budget"), ``checkpoint`` (path or None), ``parameters`` and ``history`` (this call's records).

    ``quiet`` hides the progress bar; ``progress`` is called with every record (train, eval, done).
    """
    device = _device(config.device)
    corpus = load_corpus(config.corpus)
    torch.manual_seed(config.seed)
    model = SeqMixLM(config.model).to(device)
    optimizer = make_optimizer(model, config)
    sampler = BatchSampler(corpus["train"], config.batch_size, config.seq_len, seed=config.seed)
    step, tokens, elapsed_before = 0, 0, 0.0
    out = Path(config.out_dir) if config.out_dir is not None else None
    checkpoints = out / "checkpoints" if out is not None else None
    found = None
    if out is None:
        if resume:
            raise ValueError("resume=True needs TrainConfig.out_dir (where the checkpoints are)")
    else:
        checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in checkpoints.glob(".step_*.tmp-*"):  # left by a run killed while writing
            shutil.rmtree(stale)
        found = latest(checkpoints)
        if found is not None and not resume:
            raise ValueError(f"{out} already holds a run (checkpoint {found.name}); resume it (resume=True, "
                             "--resume) or choose another out_dir")
        if found is not None:
            step, tokens, elapsed_before = _restore(found, config, model, optimizer, sampler)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    log = _Log(out / "log.jsonl" if out is not None else None, step if found is not None else None)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16")
    total = config.total_steps
    history: list[dict] = []
    val_bpb = None

    def emit(record: dict) -> None:
        history.append(record)
        log.write(record)
        if progress is not None:
            progress(record)

    def run_eval(max_bytes):
        with autocast:
            return evaluate(model, corpus["validation"], config.seq_len, max_bytes=max_bytes)

    def save() -> Path | None:
        if checkpoints is None:
            return None
        directory = step_dir(checkpoints, step)
        if not directory.exists():
            meta = {"step": step, "tokens": tokens, "elapsed_s": elapsed, "data": sampler.state_dict(),
                    "val_bpb": val_bpb, "parameters": model.num_parameters()}
            save_checkpoint(directory, model, {"model": config.model.to_dict(), "train": config.to_dict()},
                            meta, {**_optimizer_tensors(model, optimizer), **_rng_tensors()})
            for old in sorted(checkpoints.glob("step_*"))[:-config.keep_checkpoints]:
                shutil.rmtree(old)
        return directory

    bar = tqdm(total=total, initial=step, disable=quiet, unit="step", dynamic_ncols=True, desc="train")
    start = time.perf_counter()
    elapsed = elapsed_before
    mark_time, mark_tokens = start, tokens
    stopped_by, loss_value = "steps", float("nan")
    model.train()
    while step < total:
        elapsed = elapsed_before + time.perf_counter() - start
        if config.time_budget is not None and elapsed >= config.time_budget:
            stopped_by = "time_budget"
            break
        fraction = step / total
        if config.time_budget is not None:
            fraction = max(fraction, elapsed / config.time_budget)
        lr = learning_rate(config, step, fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = (t.to(device) for t in next(sampler))
        with autocast:
            logits = model(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits: softmax in float32
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss_value = loss.item()
        problem = None if math.isfinite(loss_value) else f"loss is {loss_value}"
        if problem is None:
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf).item()
            problem = None if math.isfinite(grad_norm) else f"gradient norm is {grad_norm}"
        if problem is not None and config.on_nonfinite == "stop":
            bar.close()
            raise NonFiniteError(f"step {step + 1}: {problem}; stopping (the last checkpoint is intact; "
                                 "lower lr, raise warmup_steps, or use on_nonfinite='skip')")
        if problem is None:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += x.numel()
        bar.update(1)
        if problem is not None or step % config.log_interval == 0 or step == total:
            now = time.perf_counter()
            record = {"kind": "train", "step": step, "loss": loss_value, "lr": lr,
                      "grad_norm": grad_norm if problem is None else None, "tokens": tokens,
                      "tokens_per_s": (tokens - mark_tokens) / max(now - mark_time, 1e-9),
                      "elapsed_s": elapsed_before + now - start}
            if problem is not None:
                record["skipped"] = problem
            emit(record)
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            mark_time, mark_tokens = now, tokens
        if step % config.eval_interval == 0 and step < total:
            val_bpb = run_eval(config.eval_bytes)["bpb"]
            emit({"kind": "eval", "step": step, "val_bpb": val_bpb, "eval_bytes": config.eval_bytes,
                  "elapsed_s": elapsed_before + time.perf_counter() - start})
            if not quiet:
                bar.write(f"step {step}: validation {val_bpb:.4f} bits per byte")
            mark_time = time.perf_counter()
        if step % config.checkpoint_interval == 0 and step < total:
            elapsed = elapsed_before + time.perf_counter() - start
            save()
            mark_time = time.perf_counter()
    bar.close()
    elapsed = elapsed_before + time.perf_counter() - start
    val = run_eval(config.final_eval_bytes)
    val_bpb = val["bpb"]
    checkpoint = save()
    emit({"kind": "done", "step": step, "tokens": tokens, "elapsed_s": elapsed, "val_bpb": val_bpb,
          "val_bytes": val["bytes"], "stopped_by": stopped_by})
    return {"model": model, "steps": step, "tokens": tokens, "elapsed_s": elapsed, "train_loss": loss_value,
            "val_bpb": val_bpb, "val": val, "stopped_by": stopped_by,
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
            "parameters": model.num_parameters(), "history": history}

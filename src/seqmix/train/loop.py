"""The training loop: AdamW, warm-up + cosine, clipping, a JSONL log, checkpoints and exact resumption.

``train(TrainConfig(...))`` trains a SeqMixLM on random windows of the training split (or on packed rows,
``pack=True``) and returns a summary dict (the trained ``model`` included). With ``out_dir`` it writes::

    <out>/config.json                     the TrainConfig
    <out>/log.jsonl                       one JSON record per log / evaluation step and a final one
    <out>/checkpoints/step_XXXXXXXX/      see seqmix.train.checkpoint

``train(config, resume=True)`` continues from the newest checkpoint (or starts, if there is none yet):
weights, optimiser moments, step (hence the schedule), RNG states and data position are restored, so the
losses after the checkpoint are the ones an uninterrupted run computes, step for step. Without
``resume``, an ``out_dir`` that already holds checkpoints is refused rather than overwritten.

Under a launcher (``torchrun``, ``seqmix train --nproc``) every process runs ``train``: each builds the same
model from the seed, wraps it (DDP or FSDP2, ``train.distributed``) and reads its own rows of every global
batch, in ``grad_accum`` micro-batches. The summed loss is divided by the number of targets of the *global*
batch, so the averaged gradient is the one a single process computes on the whole batch. The data position
is the global step, so a checkpoint resumes with any number of processes. Only rank 0 shows progress and
writes the log and checkpoint files; every rank takes part in gathering or writing shards.
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

from seqmix.data import IGNORE, BatchSampler, PackedSampler
from seqmix.data.prepare import open_corpus
from seqmix.data.tokenizer import check_same
from seqmix.eval import evaluate
from seqmix.ffn.moe import auxiliary_loss
from seqmix.model import SeqMixLM
from seqmix.train import distributed
from seqmix.train.checkpoint import (Checkpoint, begin_checkpoint, commit_checkpoint, latest, model_tensors,
                                     save_checkpoint, step_dir, temporary)
from seqmix.train.compiled import compile_for_training
from seqmix.train.config import TrainConfig
from seqmix.train.distributed import Ranks
from seqmix.train.tensorboard import TensorBoardLog

# what must not change between a checkpoint and its resumption (the data stream and the weights' meaning)
RESUME_FIELDS = ("model", "corpus", "tokenizer", "batch_size", "seq_len", "seed", "pack")


class NonFiniteError(RuntimeError):
    """The loss or the gradient became NaN or Inf (with ``on_nonfinite="stop"``)."""


class OutOfMemory(RuntimeError):
    """The model and a micro-batch did not fit in memory; the message says what to change."""


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, the CPU allocator's failure, or Python's MemoryError."""
    text = str(err)
    return (isinstance(err, (torch.OutOfMemoryError, MemoryError))
            or isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


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


def _save(directory: Path, config: TrainConfig, ranks: Ranks, model, wrapped, optimizer, meta: dict,
          tokenizer) -> None:
    """Write one checkpoint; every rank calls it (gathering or writing shards), rank 0 writes the files."""
    configs = {"model": config.model.to_dict(), "train": config.to_dict()}
    meta = {**meta, "world_size": ranks.world_size, "parallel": config.parallel if ranks.distributed else None}
    if config.checkpoint_format == "sharded":
        tmp = temporary(directory, tag="sharded")
        if ranks.main:
            begin_checkpoint(directory, tag="sharded")
        ranks.barrier()
        distributed.save_sharded(tmp, wrapped, optimizer)
        ranks.barrier()
        if ranks.main:
            commit_checkpoint(tmp, directory, configs, {**meta, "layout": "sharded"}, _rng_tensors(), tokenizer)
    else:
        weights = distributed.full_model_state(wrapped)
        moments = distributed.full_optimizer_tensors(wrapped, optimizer)
        if ranks.main:
            save_checkpoint(directory, model_tensors(model, weights), configs, meta, {**moments, **_rng_tensors()},
                            tokenizer)
    ranks.barrier()


def _restore(directory: Path, config: TrainConfig, model, wrapped, optimizer, sampler,
             tokenizer) -> tuple[int, int, float]:
    """Load a verified checkpoint into the run's objects -> (step, tokens, elapsed seconds)."""
    ckpt = Checkpoint(directory)  # every file's hash is checked before anything is loaded
    if ckpt.trainer_tensors is None or "train" not in ckpt.config:
        raise ValueError(f"cannot resume {directory}: it holds weights only, no training state")
    saved = TrainConfig.from_dict(ckpt.config["train"])
    trained_with = ckpt.tokenizer()
    check_same(trained_with.name, trained_with.sha256, tokenizer, f"checkpoint {directory}")
    changed = [f for f in RESUME_FIELDS if getattr(saved, f) != getattr(config, f)]
    if changed:
        raise ValueError(f"cannot resume {directory}: {', '.join(changed)} differ from the checkpoint's "
                         f"({', '.join(f'{f}={getattr(saved, f)!r}' for f in changed)})")
    if ckpt.layout == "sharded":
        ckpt.check_fits(model)
        distributed.load_sharded(directory, wrapped, optimizer)
    else:
        distributed.load_full(wrapped, optimizer, ckpt.full_state(model), ckpt.trainer_tensors)
    _restore_rng(ckpt.trainer_tensors)
    sampler.load_state_dict(ckpt.meta["data"])
    return ckpt.meta["step"], ckpt.meta["tokens"], ckpt.meta["elapsed_s"]


def _check_tokenizer_spec(directory: Path, config: TrainConfig) -> None:
    """Refuse, before any data is read, to resume a checkpoint with another tokenizer than its own."""
    try:
        saved = json.loads((directory / "config.json").read_text(encoding="utf-8"))["train"].get("tokenizer", "bytes")
    except (OSError, ValueError, KeyError):
        return  # an unreadable checkpoint is refused, with its reason, when it is loaded
    if saved != config.tokenizer:
        raise ValueError(f"cannot resume {directory}: it was trained with tokenizer {saved!r}, this run asks for "
                         f"{config.tokenizer!r}; resume with --tokenizer {saved}")


def _micro_rows(config: TrainConfig, ranks: Ranks) -> int:
    """Rows of one micro-batch: the global batch split over processes, then over accumulation steps."""
    parts = ranks.world_size * config.grad_accum
    if config.batch_size % parts:
        raise ValueError(f"TrainConfig.batch_size={config.batch_size} must be divisible by processes × grad_accum "
                         f"= {ranks.world_size} × {config.grad_accum}")
    return config.batch_size // parts


def _out_of_memory_advice(config: TrainConfig, ranks: Ranks, rows: int) -> str:
    more = ("; with several processes, --parallel fsdp also shards weights and optimiser state"
            if ranks.distributed and config.parallel == "ddp" else "")
    return (f"out of memory on {ranks.device} with micro-batches of {rows} x {config.seq_len} tokens per process. "
            f"Lower --batch-size, or keep it and raise --grad-accum (now {config.grad_accum}; the same global "
            f"batch in smaller micro-batches), add --activation-checkpointing, or use --dtype bfloat16{more}")


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
    (the evaluate() dict on ``final_eval_bytes`` of the validation split), ``setup_s`` (seconds before the first
    step: reading or preparing the data, building the model, restoring), ``stopped_by`` ("steps" or
    "time_budget"), ``checkpoint`` (path or None), ``parameters``, ``world_size`` and ``history`` (this
    call's records).

    ``quiet`` hides the progress bar (always hidden on ranks other than 0); ``progress`` is called with every
    record (train, eval, done). Raises ``NonFiniteError`` (see ``on_nonfinite``) and ``OutOfMemory`` (with
    advice) instead of the underlying errors.
    """
    ranks = Ranks.from_environment(config.device)
    try:
        rows = _micro_rows(config, ranks)
        try:
            return _train(config, ranks, rows, resume, quiet or not ranks.main, progress)
        except (RuntimeError, MemoryError) as err:
            if isinstance(err, NonFiniteError) or not is_out_of_memory(err):
                raise
            raise OutOfMemory(_out_of_memory_advice(config, ranks, rows)) from None
    finally:
        ranks.close()


def _train(config: TrainConfig, ranks: Ranks, rows: int, resume: bool, quiet: bool,
           progress: Callable[[dict], None] | None) -> dict:
    called = time.perf_counter()
    device = ranks.device
    out = Path(config.out_dir) if config.out_dir is not None else None
    checkpoints = out / "checkpoints" if out is not None else None
    found = None
    if out is None:
        if resume:
            raise ValueError("resume=True needs TrainConfig.out_dir (where the checkpoints are)")
    else:
        if ranks.main:
            checkpoints.mkdir(parents=True, exist_ok=True)
            for stale in checkpoints.glob(".step_*.tmp-*"):  # left by a run killed while writing
                shutil.rmtree(stale)
        ranks.barrier()
        found = latest(checkpoints)
        if found is not None and not resume:
            raise ValueError(f"{out} already holds a run (checkpoint {found.name}); resume it (resume=True, "
                             "--resume) or choose another out_dir")
        if found is not None:
            _check_tokenizer_spec(found, config)
    if ranks.distributed and ranks.main:  # rank 0 prepares the shards (if any are needed), the others read them
        open_corpus(config.corpus, config.tokenizer, out, quiet=quiet)
    ranks.barrier()
    corpus = open_corpus(config.corpus, config.tokenizer, out, quiet=quiet)
    tokenizer = corpus.tokenizer
    if config.model.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"the model's vocab_size={config.model.vocab_size} is smaller than tokenizer "
                         f"{tokenizer.name}'s {tokenizer.vocab_size} ids; set ModelConfig(vocab_size="
                         f"{tokenizer.vocab_size})")
    torch.manual_seed(config.seed)  # every rank builds the same initial weights
    model = SeqMixLM(config.model).to(device)
    model.activation_checkpointing = config.activation_checkpointing
    sampler = (PackedSampler if config.pack else BatchSampler)(corpus["train"], config.batch_size, config.seq_len,
                                                               seed=config.seed)
    step, tokens, elapsed_before = 0, 0, 0.0
    wrapped = distributed.wrap(model, config.parallel, ranks)
    optimizer = make_optimizer(model, config)  # after FSDP2 sharded the parameters
    if found is not None:
        step, tokens, elapsed_before = _restore(found, config, model, wrapped, optimizer, sampler, tokenizer)
    if out is not None and ranks.main:
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    log = _Log(out / "log.jsonl" if out is not None and ranks.main else None, step if found is not None else None)
    board = TensorBoardLog(out / "tensorboard") if config.tensorboard and ranks.main else None
    forward = compile_for_training(wrapped, device) if config.compile else wrapped

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16")
    total = config.total_steps
    history: list[dict] = []
    val_bpb = None
    first_row = ranks.rank * rows * config.grad_accum  # this rank's share of every global batch

    def emit(record: dict) -> None:
        history.append(record)
        log.write(record)
        if board is not None:
            board.write(record)
        if progress is not None:
            progress(record)

    def run_eval(max_bytes):
        with autocast:  # every rank evaluates (FSDP2 needs all of them for each forward)
            return evaluate(model, corpus["validation"], config.seq_len, max_bytes=max_bytes)

    def save() -> Path | None:
        if checkpoints is None:
            return None
        directory = step_dir(checkpoints, step)
        # decided collectively: every rank must take part in _save (its barriers and gathers) or none; a rank
        # that looked after rank 0 had already written the directory would otherwise skip it and hang the rest
        if not ranks.max(float(directory.exists())):
            meta = {"step": step, "tokens": tokens, "elapsed_s": elapsed, "data": sampler.state_dict(),
                    "val_bpb": val_bpb, "parameters": model.num_parameters()}
            _save(directory, config, ranks, model, wrapped, optimizer, meta, tokenizer)
            if ranks.main:
                for old in sorted(checkpoints.glob("step_*"))[:-config.keep_checkpoints]:
                    shutil.rmtree(old)
        return directory

    bar = tqdm(total=total, initial=step, disable=quiet, unit="step", dynamic_ncols=True, desc="train")
    start = time.perf_counter()
    setup_s = start - called  # data (preparing it if need be), model, checkpoint: before the first step
    elapsed = elapsed_before
    mark_time, mark_tokens = start, tokens
    stopped_by, loss_value = "steps", float("nan")
    model.train()
    while step < total:
        elapsed = elapsed_before + time.perf_counter() - start
        if config.time_budget is not None:
            elapsed = ranks.max(elapsed)  # every rank takes the same decision
            if elapsed >= config.time_budget:
                stopped_by = "time_budget"
                break
        fraction = step / total
        if config.time_budget is not None:
            fraction = max(fraction, elapsed / config.time_budget)
        lr = learning_rate(config, step, fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = [sampler.batch(step, slice(first_row + m * rows, first_row + (m + 1) * rows))
                   for m in range(config.grad_accum)]
        # the gradient of Σ loss / (targets of the global batch); DDP and FSDP2 average over ranks, hence · W
        n_targets = ranks.sum(sum(int((b[1] != IGNORE).sum()) for b in batches))[0]
        scale = ranks.world_size / max(n_targets, 1)
        loss_sum = 0.0
        for m, (x, y, *packing) in enumerate(batches):
            with distributed.gradient_sync(wrapped, m == config.grad_accum - 1):
                with autocast:
                    logits = forward(x.to(device), cu_seqlens=packing[0] if packing else None)
                logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits: softmax in float32
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1),
                                       ignore_index=IGNORE, reduction="sum")
                # MoE load balancing: a mean per micro-batch, averaged over micro-batches (and ranks, by DDP)
                (loss * scale + auxiliary_loss(model) / config.grad_accum).backward()
            loss_sum += loss.item()
        loss_value = ranks.sum(loss_sum)[0] / max(n_targets, 1)
        problem = None if math.isfinite(loss_value) else f"loss is {loss_value}"
        if problem is None:
            grad_norm = distributed.clip_grad_norm(model.parameters(), config.grad_clip or math.inf)
            problem = None if math.isfinite(grad_norm) else f"gradient norm is {grad_norm}"
        if problem is not None and config.on_nonfinite == "stop":
            bar.close()
            raise NonFiniteError(f"step {step + 1}: {problem}; stopping (the last checkpoint is intact; "
                                 "lower lr, raise warmup_steps, or use on_nonfinite='skip')")
        if problem is None:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        sampler.position = step
        tokens += config.batch_size * config.seq_len
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
    if board is not None:
        board.close()
    return {"model": model, "steps": step, "tokens": tokens, "elapsed_s": elapsed, "train_loss": loss_value,
            "val_bpb": val_bpb, "val": val, "stopped_by": stopped_by,
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
            "parameters": model.num_parameters(), "world_size": ranks.world_size, "history": history,
            "setup_s": setup_s}

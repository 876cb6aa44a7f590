"""TrainConfig: one training run (model, data, budget, optimiser, schedule, logging), validated up front."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from seqmix.data.tokenizer import check_spec
from seqmix.model import ModelConfig
from seqmix.model.config import DictConfig

DEFAULT_STEPS = 1000
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")
ON_NONFINITE = ("stop", "skip")
PARALLEL = ("ddp", "fsdp")
CHECKPOINT_FORMATS = ("full", "sharded")
# evaluation budgets in bytes of validation text: a periodic evaluation, and the final one (64 KiB: a few
# seconds for the default model on 2 cores, on a corpus of any size; `seqmix eval --eval-bytes all` for all)
DEFAULT_EVAL_BYTES = 32768
DEFAULT_FINAL_EVAL_BYTES = 65536


def default_model() -> ModelConfig:
    return ModelConfig(mixer="attention", d_model=128, n_layers=4, n_heads=4)


@dataclass
class TrainConfig(DictConfig):
    """AdamW with linear warm-up then cosine decay to ``lr · min_lr_ratio``, gradient clipping.

    Budget: ``steps``, or ``tokens`` (converted to steps of ``batch_size · seq_len`` tokens), or neither
    (``DEFAULT_STEPS``). ``time_budget`` (seconds) caps the run as well: the schedule then advances by
    whichever budget is further spent, so the learning rate still anneals when time runs out first.
    ``out_dir=None`` trains without a log or checkpoints. ``dtype="bfloat16"`` autocasts the forward pass;
    weights and optimiser stay float32, and so do the mixers' recurrences (see ``model.lm.Block``).
    ``on_nonfinite``: a NaN/Inf loss or gradient "stop"s the run or "skip"s that step.

    ``batch_size`` is the global batch (rows per optimiser step), whatever the number of processes: each of
    the ``W`` processes (``torchrun``) reads its own ``batch_size / W`` rows, in ``grad_accum`` micro-batches
    of ``batch_size / (W · grad_accum)`` rows whose gradients add up before the step. ``parallel``: "ddp"
    (every process holds the whole model) or "fsdp" (FSDP2: parameters, gradients and optimiser state
    sharded across processes). ``checkpoint_format``: "full" gathers everything into one file; "sharded"
    lets every process write its own shard (torch.distributed.checkpoint), for models too large to gather.
    ``pack``: rows are packed from whole documents and pieces (``data.PackedSampler``), each starting from
    the zero state. ``activation_checkpointing`` recomputes each block in the backward pass. ``compile``
    runs the training forward and backward through torch.compile (inductor: C++ on CPU, Triton on a GPU; with
    no compiler found it warns and trains uncompiled). ``tensorboard`` writes the log's scalars to
    ``<out_dir>/tensorboard`` as well (needs the tensorboard package).
    """

    model: ModelConfig = field(default_factory=default_model)
    corpus: str | None = None  # None: the vendored Shakespeare; else a text file, directory or glob
    tokenizer: str = "bytes"  # "bytes", "bpe:N" (trained on the training split) or a tokenizer.json path
    steps: int | None = None
    tokens: int | None = None
    time_budget: float | None = None
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float | None = 1.0
    eval_interval: int = 250
    eval_bytes: int | None = DEFAULT_EVAL_BYTES  # validation bytes per periodic evaluation (None: all)
    final_eval_bytes: int | None = DEFAULT_FINAL_EVAL_BYTES  # validation bytes for the final evaluation (None: all)
    log_interval: int = 10
    checkpoint_interval: int = 250
    keep_checkpoints: int = 2
    seed: int = 0
    out_dir: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    on_nonfinite: str = "stop"
    grad_accum: int = 1
    parallel: str = "ddp"
    checkpoint_format: str = "full"
    pack: bool = False
    activation_checkpointing: bool = False
    compile: bool = False
    tensorboard: bool = False

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"TrainConfig.model must be a ModelConfig, got {type(self.model).__name__}")
        for name in ("batch_size", "seq_len", "log_interval", "eval_interval", "checkpoint_interval",
                     "keep_checkpoints", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name}={value!r}: must be a positive integer")
        for name in ("steps", "tokens", "eval_bytes", "final_eval_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"TrainConfig.{name}={value!r}: must be a positive integer or None")
        if self.steps is not None and self.tokens is not None:
            raise ValueError("TrainConfig: give steps or tokens, not both")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"TrainConfig.time_budget={self.time_budget!r}: must be positive seconds or None")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig: lr={self.lr} must be > 0 and min_lr_ratio={self.min_lr_ratio} in [0, 1]")
        if self.warmup_steps < 0 or self.weight_decay < 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("TrainConfig: warmup_steps and weight_decay must be >= 0, beta1 and beta2 in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig.grad_clip={self.grad_clip!r}: must be positive or None")
        for name, allowed in (("device", DEVICES), ("dtype", DTYPES), ("on_nonfinite", ON_NONFINITE),
                              ("parallel", PARALLEL), ("checkpoint_format", CHECKPOINT_FORMATS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: choose one of {list(allowed)}")
        for name in ("pack", "activation_checkpointing", "compile", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: must be True or False")
        check_spec(self.tokenizer)
        if self.tensorboard and self.out_dir is None:
            raise ValueError("TrainConfig.tensorboard=True needs out_dir (the event files go to <out_dir>/tensorboard)")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size} must be divisible by grad_accum="
                             f"{self.grad_accum} (the global batch is split into grad_accum micro-batches)")

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        if self.tokens is not None:
            return math.ceil(self.tokens / (self.batch_size * self.seq_len))
        return DEFAULT_STEPS

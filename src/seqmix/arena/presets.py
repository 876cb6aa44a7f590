"""Arena presets: how big the models are, how many tokens they see, what is measured.

``micro`` runs in seconds (tests), ``cpu-small`` is sized to finish on 2 CPU cores in at most 20 minutes,
``cpu-medium`` is an overnight CPU run, ``gpu`` is sized for one modern GPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LMSettings:
    target_params: int  # models are widened or narrowed to come closest to this count
    n_layers: int
    n_heads: int
    seq_len: int  # training context L; length generalisation is evaluated at 4L
    batch_size: int
    train_tokens: int  # the same token budget for every architecture
    lr: float
    eval_len: int  # longest context for loss by position
    eval_windows: int  # held-out windows per evaluation


@dataclass(frozen=True)
class RecallSettings:
    widths: tuple[int, ...]
    archs: tuple[str, ...]
    n_layers: int
    vocab_size: int
    seq_len: int
    num_kv_pairs: int
    train_examples: int
    test_examples: int
    epochs: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class SpeedSettings:
    lengths: tuple[int, ...]  # prefill and decode contexts
    train_batch: int
    train_seq_len: int
    max_seconds: float  # stop growing L for an architecture once one prefill takes longer than this
    min_time: float = 0.2  # seconds per timed block (each timing takes a few blocks)


@dataclass(frozen=True)
class TTTAblation:
    mini_batch_sizes: tuple  # ints, or "T" for batch GD over the whole training context
    backbones: tuple[str, ...]
    train_tokens: int


@dataclass(frozen=True)
class Preset:
    name: str
    lm: LMSettings
    recall: RecallSettings
    speed: SpeedSettings
    ttt: TTTAblation
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


RECALL_ARCHS = ("attention", "linear_attention", "mamba", "mamba2", "rwkv6", "mlstm", "ttt_linear")

PRESETS = {
    "micro": Preset(
        "micro",
        LMSettings(target_params=12_000, n_layers=1, n_heads=2, seq_len=32, batch_size=4, train_tokens=4 * 32 * 6,
                   lr=3e-3, eval_len=64, eval_windows=2),
        RecallSettings(widths=(16,), archs=("attention", "gla"), n_layers=1, vocab_size=64, seq_len=16,
                       num_kv_pairs=2, train_examples=64, test_examples=32, epochs=1, batch_size=32, lr=3e-3),
        SpeedSettings(lengths=(32, 64), train_batch=2, train_seq_len=32, max_seconds=5.0, min_time=0.01),
        TTTAblation(mini_batch_sizes=(4, "T"), backbones=("mamba", "transformer"), train_tokens=4 * 32 * 4),
        "seconds; for tests",
    ),
    "cpu-small": Preset(
        "cpu-small",
        LMSettings(target_params=200_000, n_layers=2, n_heads=4, seq_len=128, batch_size=16,
                   train_tokens=16 * 128 * 150, lr=3e-3, eval_len=1024, eval_windows=8),
        RecallSettings(widths=(32, 64), archs=RECALL_ARCHS, n_layers=2, vocab_size=128, seq_len=64,
                       num_kv_pairs=4, train_examples=4000, test_examples=500, epochs=4, batch_size=64, lr=3e-3),
        SpeedSettings(lengths=(512, 2048, 8192, 32768), train_batch=8, train_seq_len=256, max_seconds=8.0,
                      min_time=0.1),
        TTTAblation(mini_batch_sizes=(1, 4, 16, 64, "T"), backbones=("mamba", "transformer"),
                    train_tokens=16 * 128 * 100),
        "2 CPU cores, at most 20 minutes",
    ),
    "cpu-medium": Preset(
        "cpu-medium",
        LMSettings(target_params=3_000_000, n_layers=4, n_heads=4, seq_len=512, batch_size=16,
                   train_tokens=20_000_000, lr=2e-3, eval_len=8192, eval_windows=16),
        RecallSettings(widths=(32, 64, 128, 256), archs=RECALL_ARCHS, n_layers=2, vocab_size=8192, seq_len=256,
                       num_kv_pairs=16, train_examples=50_000, test_examples=3000, epochs=16, batch_size=128,
                       lr=1e-3),
        SpeedSettings(lengths=(512, 2048, 8192, 32768), train_batch=16, train_seq_len=512, max_seconds=60.0),
        TTTAblation(mini_batch_sizes=(1, 4, 16, 64, "T"), backbones=("mamba", "transformer"),
                    train_tokens=10_000_000),
        "hours on a CPU",
    ),
    "gpu": Preset(
        "gpu",
        LMSettings(target_params=25_000_000, n_layers=8, n_heads=8, seq_len=2048, batch_size=32,
                   train_tokens=500_000_000, lr=1e-3, eval_len=32768, eval_windows=32),
        RecallSettings(widths=(64, 128, 256, 512), archs=RECALL_ARCHS, n_layers=2, vocab_size=8192, seq_len=256,
                       num_kv_pairs=16, train_examples=100_000, test_examples=3000, epochs=64, batch_size=256,
                       lr=1e-3),
        SpeedSettings(lengths=(512, 2048, 8192, 32768, 131072), train_batch=32, train_seq_len=2048,
                      max_seconds=60.0),
        TTTAblation(mini_batch_sizes=(1, 4, 16, 64, "T"), backbones=("mamba", "transformer"),
                    train_tokens=200_000_000),
        "one GPU",
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"arena: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]

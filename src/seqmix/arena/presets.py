"""Arena presets: which entrants race, how big they are, how long they train, how often each is repeated.

``micro`` runs in seconds (tests). ``cpu-small`` (the default) finishes on 2 CPU cores in at most 20 minutes:
to afford three seeds per quality comparison and recall trained to convergence, it races the entrants the
claims need rather than every architecture. ``cpu-medium`` (at most 2 hours on 2 cores, resumable) trains at
8× the context, so that loss against context can be judged, and runs recall on more widths, pair counts and
mixers. Neither races every architecture (all mixers and hybrid presets): ``--mixers`` does, at the cost of time. ``gpu`` is
sized for one modern GPU.
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
    seeds: int = 3  # every entrant trains with seeds 0..seeds-1: the uncertainty of every quality comparison
    entrants: tuple[str, ...] | None = None  # None: every mixer and hybrid preset


@dataclass(frozen=True, kw_only=True)
class RecallTraining:
    """How a recall model is trained to convergence (arena/recall.py): shared by recall and prompt order."""

    vocab_size: int
    n_layers: int
    train_examples: int
    val_examples: int
    test_examples: int
    batch_size: int
    lrs: tuple[float, ...]
    probe_steps: int  # every learning rate trains this long; the best continues to max_steps
    max_steps: int
    eval_every: int
    mixer_conv: int = 3  # Zoology's current convention: a kernel-3 short conv before every mixer
    target: float = 0.995  # early stop (validation accuracy; a little above the 0.99 the claim asks of the test)


@dataclass(frozen=True, kw_only=True)
class RecallSettings(RecallTraining):
    """MQAR (Zoology's generator) at every width and pair count."""

    archs: tuple[str, ...]
    widths: tuple[int, ...]
    num_kv_pairs: tuple[int, ...]
    seq_len: int


@dataclass(frozen=True, kw_only=True)
class PromptOrderSettings(RecallTraining):
    """Recall with the question before or after the context (seed 004's claim)."""

    archs: tuple[str, ...]
    width: int
    num_kv_pairs: int
    num_queries: int


@dataclass(frozen=True)
class SpeedSettings:
    lengths: tuple[int, ...]  # prefill and decode contexts
    max_seconds: float  # stop growing L for an entrant once one prefill takes longer than this
    min_time: float  # seconds of timed calls per figure and round (split into three blocks, the fastest kept)
    rounds: int  # every entrant is timed once per round; rounds run one after another across the section
    threads: int | None = 1  # torch threads in every timing (one is steadiest on a shared machine); None: torch's
    entrants: tuple[str, ...] | None = None  # None: the language-modelling entrants
    generation_archs: tuple[str, ...] = ("mamba", "attention")  # generation throughput through `sample`
    generation_batches: tuple[int, ...] = (1, 16)
    generation_context: int = 1024
    generation_tokens: int = 64
    forms_length: int = 2048  # TTT dual vs primal, one TTT-Linear layer
    forms_d_model: int = 256
    forms_heads: int = 4
    forms_rounds: int = 5
    forms_min_time: float = 0.3


@dataclass(frozen=True)
class TTTAblation:
    """TTT-Linear LMs with the language-modelling recipe and seeds: inner mini-batch b and backbone."""

    mini_batch_sizes: tuple  # ints, or "T" for batch GD over the whole training context
    backbones: tuple[str, ...]


@dataclass(frozen=True)
class KANSettings:
    """KAN vs an MLP of the same parameter count on the KAN paper's toy regression (§3.1)."""

    n_inputs: int
    hidden: int
    train_samples: int
    epochs: int
    batch_size: int
    seeds: int


@dataclass(frozen=True)
class Preset:
    name: str
    lm: LMSettings
    recall: RecallSettings
    prompt_order: PromptOrderSettings
    speed: SpeedSettings
    ttt: TTTAblation
    kan: KANSettings
    description: str = ""
    traded: str = ""  # what the preset gave up to fit its budget (printed in the report)

    def to_dict(self) -> dict:
        return asdict(self)


CLAIM_ENTRANTS = ("attention", "linear_attention", "mamba", "ttt_linear", "jamba", "samba")
MEDIUM_ENTRANTS = CLAIM_ENTRANTS + ("gla", "mamba2", "rwkv7")

PRESETS = {
    "micro": Preset(
        "micro",
        LMSettings(target_params=12_000, n_layers=1, n_heads=2, seq_len=32, batch_size=4, train_tokens=4 * 32 * 6,
                   lr=3e-3, eval_len=64, eval_windows=2, seeds=2),
        RecallSettings(archs=("attention", "gla"), widths=(16,), num_kv_pairs=(2,), seq_len=16, vocab_size=64,
                       n_layers=1, train_examples=64, val_examples=32, test_examples=32, batch_size=32,
                       lrs=(3e-3, 1e-2), probe_steps=2, max_steps=3, eval_every=2),
        PromptOrderSettings(archs=("attention", "gla"), width=16, num_kv_pairs=4, num_queries=2, vocab_size=64,
                            n_layers=1, train_examples=64, val_examples=32, test_examples=32, batch_size=32,
                            lrs=(3e-3,), probe_steps=2, max_steps=3, eval_every=2),
        SpeedSettings(lengths=(32, 64), max_seconds=5.0, min_time=0.005, rounds=2,
                      generation_batches=(1, 2), generation_context=16, generation_tokens=3, forms_length=32,
                      forms_d_model=16, forms_heads=2, forms_rounds=2, forms_min_time=0.005),
        TTTAblation(mini_batch_sizes=(4, 16, "T"), backbones=("mamba", "transformer")),
        KANSettings(n_inputs=2, hidden=4, train_samples=64, epochs=2, batch_size=32, seeds=2),
        "seconds; for tests",
    ),
    "cpu-small": Preset(
        "cpu-small",
        LMSettings(target_params=200_000, n_layers=2, n_heads=4, seq_len=128, batch_size=16,
                   train_tokens=16 * 128 * 150, lr=3e-3, eval_len=1024, eval_windows=8, seeds=3,
                   entrants=CLAIM_ENTRANTS),
        RecallSettings(archs=("attention", "linear_attention", "gla"), widths=(32, 64), num_kv_pairs=(4,),
                       seq_len=64, vocab_size=128, n_layers=2, train_examples=20_000, val_examples=500,
                       test_examples=1000, batch_size=64, lrs=(1e-2, 3e-3, 3e-2), probe_steps=150, max_steps=600,
                       eval_every=50),
        PromptOrderSettings(archs=("attention", "gla"), width=32, num_kv_pairs=8, num_queries=2, vocab_size=128,
                            n_layers=2, train_examples=20_000, val_examples=500, test_examples=1000, batch_size=64,
                            lrs=(1e-2,), probe_steps=1000, max_steps=1000, eval_every=100),
        SpeedSettings(lengths=(512, 2048, 8192), max_seconds=8.0, min_time=0.1,
                      rounds=5, entrants=MEDIUM_ENTRANTS),
        TTTAblation(mini_batch_sizes=(4, 16, "T"), backbones=("mamba", "transformer")),
        KANSettings(n_inputs=4, hidden=16, train_samples=2048, epochs=8, batch_size=64, seeds=3),
        "2 CPU cores, at most 20 minutes",
        traded="three seeds per language model and recall trained to 0.99 cost what racing every architecture "
               "would: the language-modelling and speed sections race the entrants the claims need "
               f"({', '.join(CLAIM_ENTRANTS)}; speed also GLA, Mamba-2 and RWKV-7), recall runs attention, "
               "linear attention and GLA at widths 32 and 64 on 4 pairs, the prompt-order study attention and GLA, and "
               "the TTT ablation runs b = 4, 16 and T (not b = 1, online GD, the slowest, nor 64).",
    ),
    "cpu-medium": Preset(
        "cpu-medium",
        LMSettings(target_params=200_000, n_layers=2, n_heads=4, seq_len=1024, batch_size=8,
                   train_tokens=8 * 1024 * 100, lr=3e-3, eval_len=4096, eval_windows=8, seeds=3,
                   entrants=MEDIUM_ENTRANTS),
        RecallSettings(archs=("attention", "linear_attention", "gla", "mamba2"), widths=(32, 64, 128),
                       num_kv_pairs=(4, 8), seq_len=64, vocab_size=128, n_layers=2, train_examples=20_000,
                       val_examples=500, test_examples=1000, batch_size=64, lrs=(1e-2, 3e-3, 3e-2), probe_steps=150,
                       max_steps=800, eval_every=50),
        PromptOrderSettings(archs=("attention", "gla", "mamba2"), width=32, num_kv_pairs=8, num_queries=2,
                            vocab_size=128, n_layers=2, train_examples=20_000, val_examples=500, test_examples=1000,
                            batch_size=64, lrs=(1e-2, 3e-3), probe_steps=150, max_steps=1000, eval_every=100),
        SpeedSettings(lengths=(512, 2048, 8192, 32768), max_seconds=20.0, min_time=0.1, rounds=5,
                      entrants=MEDIUM_ENTRANTS, generation_batches=(1, 16, 64), generation_context=2048,
                      generation_tokens=32),
        TTTAblation(mini_batch_sizes=(4, 16, 64, "T"), backbones=("mamba", "transformer")),
        KANSettings(n_inputs=4, hidden=32, train_samples=4096, epochs=10, batch_size=64, seeds=3),
        "context 1024 (8× cpu-small), recall on more widths and pair counts; at most 2 hours on 2 CPU cores "
        "(resumable)",
        traded="a training context of 1024 and about 0.8 M tokens per model with three seeds cost what racing every "
               f"architecture would: language modelling and speed race {', '.join(MEDIUM_ENTRANTS)}; recall runs "
               "attention, linear attention, GLA and Mamba-2 at widths 32, 64 and 128 on 4 and 8 pairs; the TTT "
               "ablation runs b = 4, 16, 64 and T (not b = 1, online GD, the slowest). Speed runs to a 32k context.",
    ),
    "gpu": Preset(
        "gpu",
        LMSettings(target_params=25_000_000, n_layers=8, n_heads=8, seq_len=2048, batch_size=32,
                   train_tokens=500_000_000, lr=1e-3, eval_len=32768, eval_windows=32, seeds=3),
        RecallSettings(archs=("attention", "linear_attention", "gla", "mamba", "mamba2", "rwkv6", "mlstm",
                              "ttt_linear"), widths=(64, 128, 256, 512), num_kv_pairs=(16, 64), seq_len=256,
                       vocab_size=8192, n_layers=2, train_examples=100_000, val_examples=1000, test_examples=3000,
                       batch_size=256, lrs=(1e-4, 4.6e-4, 2.2e-3, 1e-2), probe_steps=2000, max_steps=25_000,
                       eval_every=500),
        PromptOrderSettings(archs=("attention", "gla", "mamba", "mamba2", "ttt_linear"), width=64, num_kv_pairs=64,
                            num_queries=8, vocab_size=8192, n_layers=2, train_examples=100_000, val_examples=1000,
                            test_examples=3000, batch_size=256, lrs=(4.6e-4, 2.2e-3), probe_steps=2000,
                            max_steps=25_000, eval_every=500),
        SpeedSettings(lengths=(512, 2048, 8192, 32768, 131072), max_seconds=60.0, min_time=0.2, rounds=5, threads=None,
                      generation_batches=(1, 16, 64, 128), generation_context=2048, generation_tokens=128),
        TTTAblation(mini_batch_sizes=(1, 4, 16, 64, "T"), backbones=("mamba", "transformer")),
        KANSettings(n_inputs=4, hidden=64, train_samples=16384, epochs=20, batch_size=256, seeds=5),
        "one GPU",
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"arena: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]

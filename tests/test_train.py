import json
import signal
import subprocess
import sys

import pytest
import torch

from seqmix import ModelConfig, SeqMixLM
from seqmix.cli import main
from seqmix.eval import evaluate
from seqmix.train import Checkpoint, NonFiniteError, TrainConfig, load_model, train
from seqmix.train.checkpoint import MODEL_FILE, META_FILE, latest, save_checkpoint


def tiny(corpus, out=None, **overrides) -> TrainConfig:
    fields = dict(model=ModelConfig(mixer="gla", d_model=32, n_layers=1, n_heads=2), corpus=corpus, steps=8,
                  batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, eval_interval=1000, log_interval=1,
                  checkpoint_interval=3, out_dir=None if out is None else str(out), device="cpu")
    fields.update(overrides)
    return TrainConfig(**fields)


def losses(out) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def test_tiny_training_run_lowers_validation_loss(corpus_dir):
    config = tiny(corpus_dir, steps=60, model=ModelConfig(mixer="attention", d_model=32, n_layers=2, n_heads=2))
    torch.manual_seed(config.seed)
    untrained = SeqMixLM(config.model)  # the same initial weights train() starts from
    from seqmix.data import load_corpus
    before = evaluate(untrained, load_corpus(corpus_dir)["validation"], 32)["bpb"]
    result = train(config, quiet=True)
    assert result["steps"] == 60 and result["tokens"] == 60 * 4 * 32 and result["stopped_by"] == "steps"
    assert before > 7.5 and result["val_bpb"] < before - 2.0  # from ~8 (uniform) to well below


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, corpus_dir):
    full = train(tiny(corpus_dir, tmp_path / "full"), quiet=True)

    def crash_at_step_5(record):
        if record["step"] == 5:
            raise KeyboardInterrupt  # killed after the checkpoint at step 3, with steps 4-5 logged

    with pytest.raises(KeyboardInterrupt):
        train(tiny(corpus_dir, tmp_path / "cut"), quiet=True, progress=crash_at_step_5)
    assert latest(tmp_path / "cut" / "checkpoints").name == "step_00000003"
    resumed = train(tiny(corpus_dir, tmp_path / "cut"), resume=True, quiet=True)
    assert resumed["history"][0]["step"] == 4
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")  # step for step, bit for bit
    assert len(losses(tmp_path / "full")) == 8
    for a, b in zip(full["model"].parameters(), resumed["model"].parameters()):
        assert torch.equal(a, b)


KILL_AT_STEP_5 = """
import os, signal, sys
from seqmix import ModelConfig
from seqmix.train import TrainConfig, train

def kill(record):
    if record["step"] == 5:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handlers: the process just ends

train(TrainConfig(model=ModelConfig(mixer="gla", d_model=32, n_layers=1, n_heads=2), corpus=sys.argv[1], steps=8,
                  batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, eval_interval=1000, log_interval=1,
                  checkpoint_interval=3, out_dir=sys.argv[2], device="cpu"), quiet=True, progress=kill)
"""


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, corpus_dir):
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_AT_STEP_5, corpus_dir, str(out)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert max(losses(out)) == 5 and latest(out / "checkpoints").name == "step_00000003"
    stale = out / "checkpoints" / ".step_00000006.tmp-12345"  # as if killed while writing a checkpoint
    stale.mkdir()
    (stale / MODEL_FILE).write_bytes(b"half a file")
    train(tiny(corpus_dir, out), resume=True, quiet=True)
    assert not stale.exists()
    train(tiny(corpus_dir, tmp_path / "full"), quiet=True)
    assert losses(out) == losses(tmp_path / "full")


def test_existing_run_needs_resume_and_resume_refuses_a_different_model(tmp_path, corpus_dir):
    train(tiny(corpus_dir, tmp_path, steps=3), quiet=True)
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny(corpus_dir, tmp_path, steps=3), quiet=True)
    other = ModelConfig(mixer="gla", d_model=64, n_layers=1, n_heads=2)
    with pytest.raises(ValueError, match="cannot resume .*model"):
        train(tiny(corpus_dir, tmp_path, steps=6, model=other), resume=True, quiet=True)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["d_model"] == 32  # the run's own, kept


def test_checkpoint_round_trip(tmp_path, corpus_dir):
    result = train(tiny(corpus_dir, tmp_path, steps=3), quiet=True)
    model, ckpt = load_model(tmp_path)  # a run directory resolves to its newest checkpoint
    assert ckpt.meta["step"] == 3 and ckpt.meta["data"]["position"] == 3
    assert ckpt.config["model"] == result["model"].config.to_dict()
    tokens = torch.randint(0, 256, (2, 20))
    assert torch.equal(model(tokens), result["model"](tokens))
    tied = SeqMixLM(ModelConfig(d_model=16, n_layers=1, n_heads=2))
    save_checkpoint(tmp_path / "tied", tied, {"model": tied.config.to_dict()}, {"step": 0})
    again, _ = load_model(tmp_path / "tied")
    assert again.head.weight is again.embed.weight and torch.equal(again.embed.weight, tied.embed.weight)


def test_truncated_or_corrupt_checkpoint_is_refused(tmp_path, corpus_dir):
    train(tiny(corpus_dir, tmp_path, steps=3), quiet=True)
    ckpt_dir = latest(tmp_path / "checkpoints")
    weights = ckpt_dir / MODEL_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors is truncated or corrupt"):
        load_model(ckpt_dir)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        train(tiny(corpus_dir, tmp_path, steps=5), resume=True, quiet=True)
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same length, one bit flipped
    with pytest.raises(ValueError, match="truncated or corrupt"):
        Checkpoint(ckpt_dir)
    weights.write_bytes(data)
    Checkpoint(ckpt_dir)  # intact again
    (ckpt_dir / META_FILE).write_text('{"format": "seqmix-checkpoint/1", "sha2')
    with pytest.raises(ValueError, match="meta.json is corrupt"):
        Checkpoint(ckpt_dir)


def test_mismatched_checkpoint_is_refused_and_nothing_is_loaded(tmp_path):
    small = SeqMixLM(ModelConfig(mixer="gla", d_model=32, n_layers=2, n_heads=2))
    save_checkpoint(tmp_path / "c", small, {"model": small.config.to_dict()}, {"step": 0})
    ckpt = Checkpoint(tmp_path / "c")
    wider = SeqMixLM(ModelConfig(mixer="gla", d_model=64, n_layers=2, n_heads=2))
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ValueError, match=r"does not fit this model: blocks\.0\..*: shape \(.*\) != model's \(.*\)"):
        ckpt.load_weights(wider)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())
    with pytest.raises(ValueError, match="missing blocks.0.mixer"):
        ckpt.load_weights(SeqMixLM(ModelConfig(mixer="attention", d_model=32, n_layers=2, n_heads=2)))
    with pytest.raises(FileNotFoundError, match="no seqmix checkpoint"):
        load_model(tmp_path / "nowhere")


class _NaNAtCall:
    def __init__(self, n):
        self.n, self.calls = n, 0
        self.real = torch.nn.functional.cross_entropy

    def __call__(self, *args, **kwargs):
        self.calls += 1
        loss = self.real(*args, **kwargs)
        return loss * float("nan") if self.calls == self.n else loss


def test_nonfinite_loss_stops_naming_the_step_or_is_skipped(monkeypatch, corpus_dir):
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", _NaNAtCall(3))
    with pytest.raises(NonFiniteError, match="step 3: loss is nan"):
        train(tiny(corpus_dir, steps=5, final_eval_bytes=64), quiet=True)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", _NaNAtCall(3))
    result = train(tiny(corpus_dir, steps=5, on_nonfinite="skip", final_eval_bytes=64), quiet=True)
    skipped = [r for r in result["history"] if r.get("skipped")]
    assert [r["step"] for r in skipped] == [3] and result["steps"] == 5


def test_time_budget_stops_the_run_and_anneals(corpus_dir):
    result = train(tiny(corpus_dir, steps=100_000, time_budget=1.0, final_eval_bytes=64), quiet=True)
    assert result["stopped_by"] == "time_budget" and 0 < result["steps"] < 100_000
    lrs = [r["lr"] for r in result["history"] if r["kind"] == "train"]
    assert lrs[-1] < 0.5 * max(lrs)  # the cosine followed the clock, not the 100k steps


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=10, tokens=100), "steps or tokens, not both"),
    (dict(dtype="float16"), "dtype='float16'"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(on_nonfinite="ignore"), "on_nonfinite='ignore'"),
    (dict(time_budget=0), "time_budget=0"),
])
def test_train_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError) as err:
        TrainConfig(**kwargs)
    assert message in str(err.value)


def test_token_budget_and_config_round_trip():
    config = TrainConfig(tokens=10_000, batch_size=4, seq_len=32)
    assert config.total_steps == 79
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_bfloat16_autocast_trains(corpus_dir):
    result = train(tiny(corpus_dir, steps=2, dtype="bfloat16", final_eval_bytes=64), quiet=True)
    assert result["model"].embed.weight.dtype == torch.float32 and result["val_bpb"] < 9


def test_cli_train_eval_smoke(tmp_path, corpus_dir, capsys):
    out = tmp_path / "run"
    args = ["train", "--mixer", "gla", "--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--steps", "4",
            "--batch-size", "2", "--seq-len", "16", "--corpus", corpus_dir, "--out", str(out), "--quiet",
            "--mixer-options", '{"decay": "scalar"}']
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "validation:" in printed and "bits per byte" in printed
    assert json.loads((out / "config.json").read_text())["model"]["mixer_options"] == {"decay": "scalar"}
    assert main(["train", "--resume", "--out", str(out), "--steps", "6", "--quiet"]) == 0  # its saved settings
    assert latest(out / "checkpoints").name == "step_00000006"
    assert main(["eval", "--checkpoint", str(out), "--max-bytes", "256"]) == 0
    printed = capsys.readouterr().out
    assert "validation:" in printed and "test:" in printed and "by position" in printed
    assert main(["train", "--mixer", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown; available" in capsys.readouterr().err


def test_eval_bytes_caps_every_evaluation_and_all_measures_the_whole_split(tmp_path, corpus_dir, capsys):
    from seqmix.data import load_corpus

    whole = sum(len(d.data) - 1 for d in load_corpus(corpus_dir)["validation"])
    args = ["train", "--mixer", "gla", "--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--steps", "2",
            "--batch-size", "2", "--seq-len", "16", "--corpus", corpus_dir, "--quiet", "--eval-interval", "1"]
    assert main(args + ["--out", str(tmp_path / "capped"), "--eval-bytes", "160"]) == 0
    config = json.loads((tmp_path / "capped" / "config.json").read_text())
    assert config["eval_bytes"] == config["final_eval_bytes"] == 160
    records = [json.loads(line) for line in (tmp_path / "capped" / "log.jsonl").read_text().splitlines()]
    assert [r["eval_bytes"] for r in records if r["kind"] == "eval"] == [160]
    final = [r["val_bytes"] for r in records if r["kind"] == "done"]
    assert len(final) == 1 and 160 - 16 < final[0] <= 160 < whole  # 10 windows of up to 16 predicted bytes
    assert main(args + ["--out", str(tmp_path / "all"), "--eval-bytes", "all"]) == 0
    config = json.loads((tmp_path / "all" / "config.json").read_text())
    assert config["eval_bytes"] is None and config["final_eval_bytes"] is None
    assert json.loads((tmp_path / "all" / "log.jsonl").read_text().splitlines()[-1])["val_bytes"] == whole
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "all"), "--split", "validation", "--json",
                 "--eval-bytes", "all"]) == 0
    assert json.loads(capsys.readouterr().out)["validation"]["bytes"] == whole
    assert main(["eval", "--checkpoint", str(tmp_path / "all"), "--split", "validation", "--json",
                 "--eval-bytes", "96"]) == 0
    assert 96 - 16 < json.loads(capsys.readouterr().out)["validation"]["bytes"] <= 96
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "bad"), "--eval-bytes", "lots"])
    assert "'all' for the whole split" in capsys.readouterr().err


def test_the_default_evaluations_are_bounded():
    from seqmix.commands import eval as eval_command

    parser = __import__("argparse").ArgumentParser()
    eval_command.configure(parser)
    default = parser.parse_args(["--checkpoint", "x"]).eval_bytes
    assert default == TrainConfig().final_eval_bytes == 65536 and TrainConfig().eval_bytes == 32768


def _compile_config(**overrides) -> TrainConfig:
    return tiny(None, steps=3, model=ModelConfig(mixer="attention", d_model=16, n_layers=1, n_heads=2),
                final_eval_bytes=64, **overrides)


@pytest.mark.slow  # inductor builds the forward and backward kernels: about 30 s of CPU
def test_compiled_training_computes_the_uncompiled_losses():
    """torch.compile (inductor's C++ on CPU) fuses the same arithmetic: the losses agree to float rounding."""
    from seqmix.train.compiled import compiler_problem

    if compiler_problem(torch.device("cpu")) is not None:
        pytest.skip(compiler_problem(torch.device("cpu")))
    eager = train(_compile_config(), quiet=True)
    compiled = train(_compile_config(compile=True), quiet=True)
    a = [r["loss"] for r in eager["history"] if r["kind"] == "train"]
    b = [r["loss"] for r in compiled["history"] if r["kind"] == "train"]
    assert len(a) == 3 and a == pytest.approx(b, rel=1e-5, abs=0)
    assert compiled["val_bpb"] == pytest.approx(eager["val_bpb"], rel=1e-5)


def test_compile_without_a_compiler_says_so_and_trains_uncompiled(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found.*training uncompiled"):
        fallback = train(_compile_config(compile=True), quiet=True)
    eager = train(_compile_config(), quiet=True)
    losses_of = lambda result: [r["loss"] for r in result["history"] if r["kind"] == "train"]  # noqa: E731
    assert len(losses_of(eager)) == 3 and losses_of(fallback) == losses_of(eager)


def test_tensorboard_holds_the_logged_scalars(tmp_path, corpus_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(tiny(corpus_dir, out, steps=4, eval_interval=2, final_eval_bytes=64, tensorboard=True), quiet=True)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for name in ("loss", "lr", "tokens_per_s", "grad_norm"):
        logged = [(r["step"], r[name]) for r in records if r["kind"] == "train"]
        written = [(e.step, e.value) for e in events.Scalars(f"train/{name}")]
        assert [s for s, _ in written] == [s for s, _ in logged]
        assert [v for _, v in written] == pytest.approx([v for _, v in logged], rel=1e-6)
    evals = [(r["step"], r["val_bpb"]) for r in records if r.get("val_bpb") is not None]
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("eval/val_bpb")] == evals
    assert [e.step for e in events.Scalars("eval/val_bpb")] == [2, 4]
    with pytest.raises(ValueError, match="tensorboard=True needs out_dir"):
        tiny(corpus_dir, None, tensorboard=True)

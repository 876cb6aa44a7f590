"""Training at scale: several processes (DDP, FSDP2 on gloo), packed documents, bf16, activation
checkpointing, resumption across process counts, refused corrupt checkpoints, out-of-memory advice.

The multi-process runs launch 2 CPU processes (torchrun, and `seqmix train --nproc 2`) with the rendezvous on
127.0.0.1 and compare their losses with a one-process run of the same global batch.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import assert_close
from seqmix import ModelConfig, SeqMixLM, available_mixers
from seqmix.cli import main
from seqmix.data import IGNORE, Document, PackedSampler
from seqmix.model.state import map_state
from seqmix.train import Checkpoint, OutOfMemory, TrainConfig, load_model, train
from seqmix.train.checkpoint import latest
from seqmix.train.distributed import Ranks
from seqmix.train.loop import _micro_rows

LOSS_TOL = 1e-5  # one process vs two: the same global batch, summed in another order



TINY = dict(mixer="gla", d_model=32, n_layers=2, n_heads=2)
FLAGS = ["--mixer", "gla", "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--steps", "6", "--batch-size", "8",
         "--seq-len", "32", "--warmup-steps", "2", "--log-interval", "1", "--device", "cpu", "--quiet"]


def tiny(corpus, out, **overrides) -> TrainConfig:
    fields = dict(model=ModelConfig(**TINY), corpus=corpus, steps=6, batch_size=8, seq_len=32, warmup_steps=2,
                  log_interval=1, eval_interval=1000, checkpoint_interval=3, out_dir=str(out), device="cpu")
    fields.update(overrides)
    return TrainConfig(**fields)


def losses(out) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert len({r["step"] for r in train_records}) == len(train_records), "a step was logged twice (two writers?)"
    return {r["step"]: r["loss"] for r in train_records}


def assert_losses_match(actual: dict, expected: dict, steps) -> None:
    assert sorted(actual) == sorted(expected)
    worst = max(abs(actual[s] - expected[s]) for s in steps)
    assert worst <= LOSS_TOL, f"losses differ by {worst:.2e} > {LOSS_TOL}"


def run_processes(args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def forget_after(out, step: int) -> None:
    """As if the run had been killed after the checkpoint of ``step``."""
    for ckpt in (out / "checkpoints").glob("step_*"):
        if int(ckpt.name[5:]) > step:
            shutil.rmtree(ckpt)


# --- several processes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_resume_a_one_process_run_and_match_it(tmp_path, corpus_dir, parallel):
    """torchrun, 2 gloo processes with 2 accumulated micro-batches each (global batch 8 = 2 × 2 × 2), resuming a
    one-process checkpoint: the losses after it are the one-process run's, and so is the gathered checkpoint."""
    single = tmp_path / "single"
    train(tiny(corpus_dir, single), quiet=True)
    resumed = tmp_path / "resumed"
    shutil.copytree(single, resumed)
    forget_after(resumed, 3)
    run_processes(["-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", "127.0.0.1:0", "--local-addr", "127.0.0.1",
                   "-m", "seqmix", "train", "--resume", "--out", str(resumed), "--grad-accum", "2",
                   "--parallel", parallel, "--quiet"])
    assert_losses_match(losses(resumed), losses(single), steps=(4, 5, 6))
    ckpt = Checkpoint(latest(resumed / "checkpoints"))
    assert ckpt.meta["world_size"] == 2 and ckpt.meta["parallel"] == parallel and ckpt.meta["data"]["position"] == 6
    reference = Checkpoint(latest(single / "checkpoints"))
    assert sorted(ckpt.model_tensors) == sorted(reference.model_tensors)  # the same one-file layout
    assert sorted(ckpt.trainer_tensors) == sorted(reference.trainer_tensors)
    for name, tensor in {**reference.model_tensors, **reference.trainer_tensors}.items():
        if not name.startswith("rng/"):
            assert_close(ckpt.model_tensors.get(name, ckpt.trainer_tensors.get(name)), tensor, atol=1e-5, what=name)


def test_fsdp_two_processes_packed_match_one_process_and_sharded_checkpoint_resumes_on_one(tmp_path, corpus_dir):
    """`seqmix train --nproc 2 --parallel fsdp --pack --checkpoint-format sharded` from scratch equals one
    process step for step; its sharded step-3 checkpoint resumes on one process, and loads for evaluation."""
    single = tmp_path / "single"
    train(tiny(corpus_dir, single, pack=True), quiet=True)
    sharded = tmp_path / "fsdp"
    run_processes(["-m", "seqmix", "train", *FLAGS, "--corpus", corpus_dir, "--out", str(sharded), "--nproc", "2",
                   "--parallel", "fsdp", "--pack", "--checkpoint-format", "sharded", "--checkpoint-interval", "3"])
    assert_losses_match(losses(sharded), losses(single), steps=range(1, 7))
    step3 = sharded / "checkpoints" / "step_00000003"
    assert Checkpoint(step3).layout == "sharded" and len(list(step3.glob("*.distcp"))) == 2
    model, _ = load_model(sharded)  # the step-6 shards, gathered into one process
    expected, _ = load_model(single)
    tokens = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert_close(model(tokens), expected(tokens), atol=1e-4, what="final weights")

    forget_after(sharded, 3)
    train(tiny(corpus_dir, sharded, pack=True), resume=True, quiet=True)
    assert_losses_match(losses(sharded), losses(single), steps=(4, 5, 6))

    (step3 / "__1_0.distcp").write_bytes(b"\0" + (step3 / "__1_0.distcp").read_bytes()[1:])
    forget_after(sharded, 3)
    with pytest.raises(ValueError, match="__1_0.distcp is truncated or corrupt"):
        train(tiny(corpus_dir, sharded, pack=True), resume=True, quiet=True)


def test_resume_refuses_a_corrupt_checkpoint_and_a_changed_data_stream(tmp_path, corpus_dir):
    out = tmp_path / "run"
    train(tiny(corpus_dir, out, steps=3, final_eval_bytes=64), quiet=True)
    with pytest.raises(ValueError, match="cannot resume .*pack"):
        train(tiny(corpus_dir, out, steps=4, pack=True), resume=True, quiet=True)
    trainer = latest(out / "checkpoints") / "trainer.safetensors"
    data = trainer.read_bytes()
    trainer.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="trainer.safetensors is truncated or corrupt"):
        train(tiny(corpus_dir, out, steps=4), resume=True, quiet=True)


def test_distributed_batch_split_must_divide_the_global_batch():
    two = Ranks(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    assert _micro_rows(TrainConfig(batch_size=8, grad_accum=2), two) == 2
    with pytest.raises(ValueError, match=r"batch_size=6 must be divisible by processes × grad_accum = 2 × 2"):
        _micro_rows(TrainConfig(batch_size=6, grad_accum=2), two)
    with pytest.raises(ValueError, match="grad_accum=4"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="parallel='zero3'"):
        TrainConfig(parallel="zero3")
    with pytest.raises(ValueError, match="checkpoint_format='pickle'"):
        TrainConfig(checkpoint_format="pickle")


def test_distributed_nproc_is_refused_under_torchrun(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--nproc", "2", "--steps", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--nproc=2" in capsys.readouterr().err


# --- packed documents ---------------------------------------------------------------------------------------

B, T = 2, 23
CU = torch.tensor([0, 5, 6, 17, 23, 30, 46])  # a one-token document; 23 is also the row end; 23..30 in row 2


PRODUCTION_SETTINGS = [("attention", 0, {"n_kv_heads": 1, "qk_norm": "all", "rope_fraction": 0.5, "output_gate": True}),
                       ("gated_deltanet", 0, {"n_k_heads": 1, "head_dim_k": 8, "head_dim_v": 12}),
                       ("rglru", 0, {"bias": True, "reset_first": True})]


@pytest.mark.parametrize("mixer, mixer_conv, options", [(m, 0, {}) for m in available_mixers()]
                         + [("gla", 3, {}), ("attention", 3, {})] + PRODUCTION_SETTINGS)
def test_packed_documents_are_isolated_for_every_mixer(mixer, mixer_conv, options):
    """Packed logits equal each document run alone, in the chunked form and one token at a time through the
    state (float64); changing one document changes no logit of another. Also with a short conv before the mixer."""
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2, mixer_conv=mixer_conv,
                                 mixer_options=options)).double().eval()
    tokens = torch.randint(0, 256, (B, T))
    with torch.no_grad():
        packed = model(tokens, cu_seqlens=CU).reshape(B * T, -1)
        flat = tokens.reshape(-1)
        for start, end in zip(CU.tolist(), CU.tolist()[1:]):
            alone = model(flat[start:end][None])[0]
            assert_close(packed[start:end], alone, what=f"{mixer} document {start}:{end}")
        start, end = 6, 17  # token by token through the state: the step form, from the zero state
        state = model.init_state(1)
        steps = []
        for t in range(start, end):
            logits, state = model(flat[t:t + 1][None], state=state)
            steps.append(logits[0])
        assert_close(packed[start:end], torch.cat(steps), what=f"{mixer} step form")

        changed = flat.clone()
        changed[6:17] = torch.randint(0, 256, (11,))
        after = model(changed.reshape(B, T), cu_seqlens=CU).reshape(B * T, -1)
        outside = torch.ones(B * T, dtype=torch.bool)
        outside[6:17] = False
        assert torch.equal(after[outside], packed[outside])
        assert not torch.allclose(after[6:17], packed[6:17])


def test_packed_forward_refuses_bad_cu_seqlens_and_a_state():
    model = SeqMixLM(ModelConfig(mixer="gla", d_model=16, n_layers=1, n_heads=2))
    tokens = torch.randint(0, 256, (2, 4))
    for bad in ([0, 3, 7], [1, 8], [0, 5, 5, 8], [[0, 8]]):
        with pytest.raises(ValueError, match="cu_seqlens must be"):
            model(tokens, cu_seqlens=torch.tensor(bad))
    with pytest.raises(ValueError, match="cu_seqlens must be"):
        model(tokens, cu_seqlens=torch.tensor([0.0, 8.0]))
    with pytest.raises(ValueError, match="give no state"):
        model(tokens, state=model.init_state(2), cu_seqlens=torch.tensor([0, 8]))
    assert torch.equal(model(tokens, cu_seqlens=torch.tensor([0, 4, 8])), model(tokens))  # rows only


def test_packed_sampler_rows_hold_whole_documents_and_pieces():
    # every document one repeated letter, so a piece is a run of one letter
    docs = [Document(f"d{i}", bytes([97 + i]) * n) for i, n in enumerate([7, 1, 3, 20, 2, 9, 1, 4])]
    sampler = PackedSampler(docs, batch_size=16, seq_len=10, seed=5)
    seen = set()
    for index in range(20):
        x, y, cu = sampler.batch(index)
        assert x.shape == y.shape == (16, 10) and int(cu[0]) == 0 and int(cu[-1]) == x.numel()
        flat_x, flat_y = x.reshape(-1), y.reshape(-1)
        assert set(range(0, x.numel(), 10)) <= set(cu.tolist())  # every row starts a piece
        for a, b in zip(cu.tolist(), cu.tolist()[1:]):
            piece = flat_x[a:b]
            assert (piece == piece[0]).all()  # one document per piece
            seen.add(int(piece[0]))
            assert (flat_y[a:b - 1] == piece[0]).all()  # next bytes of the same document ...
            assert int(flat_y[b - 1]) in (int(piece[0]), IGNORE)  # ... and never another document's
        assert ((y == IGNORE) == (torch.cat([x[:, 1:], y[:, -1:]], 1) != x)).all()  # exactly at crossings
        rows = slice(4, 8)
        part = sampler.batch(index, rows)
        assert torch.equal(part[0], x[rows]) and torch.equal(part[1], y[rows])
        assert torch.equal(part[2], cu[(cu >= 40) & (cu <= 80)] - 40)
    assert seen == set(range(97, 105))  # short documents too, the one-byte ones included
    with pytest.raises(ValueError, match="fewer than seq_len"):
        PackedSampler([Document("x", b"short")], 2, 64)


# --- memory: bf16, activation checkpointing, out of memory -------------------------------------------------

@pytest.mark.parametrize("mixer", available_mixers())
def test_bfloat16_autocast_keeps_recurrent_states_float32(mixer):
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2))
    tokens = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        reference = model(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, state = model(tokens, state=model.init_state(2))
    dtypes = set()
    map_state(lambda t: dtypes.add(t.dtype), state)
    assert dtypes - {torch.int64} == {torch.float32}
    assert logits.dtype == torch.bfloat16  # the head did run in bf16
    rel_rms = ((logits.float() - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()).item()
    assert rel_rms <= 1e-2


@pytest.mark.parametrize("mixer", available_mixers())
def test_activation_checkpointing_gives_the_same_gradients(mixer):
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2)).double()
    tokens = torch.randint(0, 256, (2, 19))
    grads = []
    for recompute in (False, True):
        model.activation_checkpointing = recompute
        model.zero_grad()
        model(tokens, cu_seqlens=torch.tensor([0, 7, 38])).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert_close(grads[1][name], g, atol=1e-12, what=f"{mixer} {name}")


ALLOC = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes. Error code 12"


def test_out_of_memory_gives_advice_not_a_traceback(monkeypatch, corpus_dir, tmp_path, capsys):
    def no_memory(self, tokens, state):
        raise RuntimeError(ALLOC)

    monkeypatch.setattr(SeqMixLM, "_run", no_memory)
    with pytest.raises(OutOfMemory, match=r"micro-batches of 4 x 32 tokens .*--grad-accum.*--activation-checkpointing"):
        train(tiny(corpus_dir, tmp_path / "a", grad_accum=2))
    args = ["train", *FLAGS, "--corpus", corpus_dir, "--out", str(tmp_path / "b")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "out of memory on cpu" in err and "--batch-size" in err and "Traceback" not in err

    def cuda_oom(self, tokens, state):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(SeqMixLM, "_run", cuda_oom)
    with pytest.raises(OutOfMemory, match="--dtype bfloat16"):
        train(tiny(corpus_dir, tmp_path / "c"))

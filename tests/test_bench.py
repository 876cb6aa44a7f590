"""`seqmix bench` wiring at tiny sizes: the suites run, the TTT forms agree, the crossover is read correctly.
Speed itself is not tested (benchmarks are not timed tests); see DESIGN §5."""
import argparse
import json
import os
import sys

import pytest

from seqmix.bench import cli
from seqmix.bench.harness import measure_roofline
from seqmix import ModelConfig, SeqMixLM
from seqmix.bench.suites import state_bytes, ttt_forms_suite


def test_faster_from_needs_every_longer_length_to_win():
    rows = [{"mixer": m, "L": L, "us_per_token": t} for m, L, t in [
        ("attention", 1, 1.0), ("attention", 2, 2.0), ("attention", 4, 4.0), ("attention", 8, 8.0),
        ("ttt_linear", 1, 2.0), ("ttt_linear", 2, 1.5), ("ttt_linear", 4, 5.0), ("ttt_linear", 8, 3.0),
        ("gla", 1, 9.0), ("gla", 2, 9.0), ("gla", 4, 9.0), ("gla", 8, 9.0)]]
    assert cli.faster_from(rows, "ttt_linear") == 8  # wins at 2, loses at 4, wins from 8 on
    assert cli.faster_from(rows, "gla") is None


@pytest.mark.parametrize("mixer", ["ttt_linear", "ttt_mlp"])
def test_ttt_forms_suite_times_three_agreeing_forms(mixer):
    rows = ttt_forms_suite(mixer, 19, 16, 2, {"mini_batch_size": 4}, rounds=1, min_time=0.0)
    assert [r["form"] for r in rows] == ["dual (chunked)", "primal (materialised)", "primal (step loop)"]
    assert rows[0]["vs_dual"] == 1.0 and all(r["seconds"] > 0 and r["L"] == 19 for r in rows)


def test_bench_cli_ttt_suite_writes_all_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "measure_roofline", lambda: measure_roofline(n=64, copy_mib=1, min_time=0.01))
    out = tmp_path / "bench.json"
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["--suite", "ttt", "--lengths", "16,32", "--contexts", "8", "--d-model", "16",
                              "--n-heads", "2", "--rounds", "1", "--min-time", "0", "--ttt-length", "16",
                              "--mixer-options", '{"ttt_linear": {"mini_batch_size": 4}}', "--out", str(out)])
    assert cli.run(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["suite"] for r in rows} == {"ttt_forms", "forward", "decode"}
    assert {r["mixer"] for r in rows if r["suite"] == "forward"} == {"ttt_linear", "ttt_mlp", "attention"}
    printed = capsys.readouterr().out
    assert "faster than attention from" in printed and "primal (step loop)" in printed


def test_official_ttt_comparison_explains_a_bad_checkout(tmp_path, capsys):
    """The official code is never vendored: a path without it, or an environment that cannot import it, is
    refused with what to do about it."""
    from seqmix.cli import main

    assert main(["bench", "--suite", "ttt", "--ttt-official", str(tmp_path)]) == 2
    assert "no ttt.py there" in capsys.readouterr().err
    (tmp_path / "ttt.py").write_text("from transformers import SomethingRemovedInV5\n")
    assert main(["bench", "--suite", "ttt", "--ttt-official", str(tmp_path)]) == 2
    assert "needs transformers 4.44" in capsys.readouterr().err


def test_fastest_block_ignores_a_block_slowed_by_interference():
    import time

    from seqmix.bench.harness import fastest_block, time_block
    delays = iter([0.05])

    def call():  # the first call is held up (as by another process), the rest are fast
        time.sleep(next(delays, 0.001))

    assert fastest_block(call, min_time=0.03, blocks=3) < 0.01
    delays = iter([0.05])
    assert time_block(call, min_time=0.03) >= 0.05  # one block would have reported the interference


def test_bench_cli_generate_suite_times_whole_models_against_their_floor(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "measure_read_bandwidth", lambda device="cpu": 10.0)
    out = tmp_path / "generate.json"
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["--suite", "generate", "--mixers", "gla,mamba", "--sizes", "16x1,32x2",
                              "--batches", "1,3", "--rounds", "2", "--new-tokens", "3", "--out", str(out)])
    assert cli.run(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 * 2 * 2 and {r["variant"] for r in rows} == {"eager"}
    for r in rows:  # floor = (weights + the batch's state) / 10 GB/s
        model = SeqMixLM(ModelConfig(mixer=r["mixer"], d_model=r["d_model"], n_layers=r["n_layers"], n_heads=1))
        assert r["param_bytes"] == 4 * model.num_parameters()
        assert r["floor_us"] == pytest.approx((r["param_bytes"] + state_bytes(model.init_state(r["batch"]))) / 1e4)
        assert len(r["round_us"]) == 2 and r["us_per_token"] > 0 and r["products_us"] > 0
    assert "| gla | d 16 × 1 | 3 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--sizes='16'"):
        cli._sizes("16")


def test_bench_cli_hf_layers_checks_against_transformers_first(tmp_path, capsys):
    pytest.importorskip("transformers.models.qwen3_next")
    pytest.importorskip("transformers.models.kimi_linear")
    pytest.importorskip("transformers.models.lfm2")
    out = tmp_path / "hf.json"
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["--suite", "hf-layers", "--lengths", "70", "--d-model", "32", "--n-heads", "2",
                              "--rounds", "1", "--min-time", "0", "--out", str(out)])
    assert cli.run(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["mixer"] for r in rows] == ["gated_deltanet", "kda", "lightning", "short_conv", "attention", "mla"]
    assert all(r["L"] == 70 and r["relative_error"] <= 1e-4 and r["speedup"] > 0 for r in rows)
    # the projections are part of each layer, so the ceiling they imply is computed from the same timings
    assert all(r["ceiling"] == r["transformers_ms"] / r["projections_ms"] > 0 for r in rows)
    assert "| `kda` | KimiLinearDeltaAttention" in capsys.readouterr().out
    args = parser.parse_args(["--suite", "hf-layers", "--mixers", "mamba"])
    with pytest.raises(ValueError, match=r"--mixers \['mamba'\]: the transformers comparison has"):
        cli.run(args)



@pytest.mark.slow  # inductor builds a training step: about 30 s of CPU
def test_bench_train_reports_tokens_per_second_with_and_without_compile(capsys):
    from seqmix.cli import main

    assert main(["bench", "--suite", "train", "--mixers", "attention", "--sizes", "16x1", "--batches", "2",
                 "--seq-len", "16", "--rounds", "1", "--min-time", "0.01"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| attention |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == "2 × 16" and cells[5].endswith("×") and float(cells[7]) < 1e-5


def test_llama_cpp_comparison_explains_what_is_missing(tmp_path, capsys, monkeypatch):
    """llama.cpp is a peer the user installs, never a dependency: a path without its converter, or no
    llama_cpp module, is refused with what is missing and how to get it (this runs without llama.cpp)."""
    from seqmix.cli import main

    assert main(["bench", "--suite", "decode", "--llama-cpp", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no convert_hf_to_gguf.py there" in err and "github.com/ggml-org/llama.cpp" in err
    assert main(["bench", "--suite", "decode", "--llama-cpp", str(tmp_path / "convert.py")]) == 2
    assert "no convert_hf_to_gguf.py there" in capsys.readouterr().err
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    assert main(["bench", "--suite", "decode", "--llama-cpp", str(tmp_path)]) == 2
    assert "pip install llama-cpp-python" in capsys.readouterr().err
    assert main(["bench", "--suite", "generate", "--llama-cpp", str(tmp_path)]) == 2
    assert "use it with --suite decode" in capsys.readouterr().err
    assert main(["bench", "--suite", "decode", "--llama-cpp", str(tmp_path), "--mixers", "gla"]) == 2
    assert "converts transformers ['mamba', 'mamba2'] models" in capsys.readouterr().err
    assert cli._sizes_vocab("256x4,768x24x50280") == [(256, 4, 50280), (768, 24, 50280)]
    with pytest.raises(ValueError, match="d_modelxlayersxvocab"):
        cli._sizes_vocab("256x4x1x1")


def _llama_cpp_converter():
    """llama.cpp's convert_hf_to_gguf.py (or a checkout) from SEQMIX_LLAMA_CPP, with llama_cpp importable."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    path = os.environ.get("SEQMIX_LLAMA_CPP")
    if not path:
        pytest.skip("set SEQMIX_LLAMA_CPP to llama.cpp's convert_hf_to_gguf.py or a llama.cpp checkout holding it")
    return path


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_llama_cpp_comparison_decodes_the_same_tokens(mixer, tmp_path, capsys):
    """The suite's whole path at a tiny size: the same random transformers model converted to GGUF and to seqmix,
    greedy tokens equal in llama.cpp (f32), seqmix and transformers; one row per variant with its fields."""
    converter = _llama_cpp_converter()
    out = tmp_path / "llama.json"
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["--suite", "decode", "--llama-cpp", converter, "--mixers", mixer, "--sizes",
                              "64x2x256", "--llama-threads", "1", "--rounds", "1", "--new-tokens", "8",
                              "--out", str(out)])
    assert cli.run(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["llama.cpp f32", "llama.cpp f16", "seqmix eager", "transformers"]
    for r in rows:
        assert (r["mixer"], r["d_model"], r["n_layers"], r["vocab"], r["threads"]) == (mixer, 64, 2, 256, 1)
        assert r["us_per_token"] > 0 and len(r["round_us"]) == 1 and r["floor_us"] > 0 and len(r["tokens"]) == 8
    by = {r["variant"]: r for r in rows}
    assert by["seqmix eager"]["agree"] == 8 and by["transformers"]["agree"] == 8
    assert len(set(by["llama.cpp f32"]["tokens"])) > 1  # not the repeated last token of a degenerate model
    assert f"| {mixer} | d 64 × 2, vocab 256" in capsys.readouterr().out

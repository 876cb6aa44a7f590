"""The arena end to end on the micro preset: every report section, finite numbers, and the cache."""
import json
import math

import pytest

from seqmix.arena import cells
from seqmix.arena.claims import CLAIMS, VERDICTS, judge_all
from seqmix.arena.report import SECTIONS
from seqmix.cli import main

ARCHS = "attention,gla,ttt_linear"


def _numbers(obj, path="results"):
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")


@pytest.fixture(scope="module")
def arena_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("arena")
    assert main(["arena", "--preset", "micro", "--mixers", ARCHS, "--out", str(out)]) == 0
    return out


def test_micro_arena_writes_every_section_and_plot(arena_run):
    report = (arena_run / "report.md").read_text()
    for section in SECTIONS:
        assert f"## {section}" in report, f"report lacks section {section!r}"
    assert report.index("## Claims") < report.index("## Setup")  # the claims table opens the report
    for word in ("bits per byte", "MQAR", "Decode latency", "Loss by position", "Wilson"):
        assert word.lower() in report.lower()
    for png in ("training_loss.png", "language_modelling.png", "loss_by_position.png", "recall.png", "prefill.png",
                "decode.png", "prompt_order.png", "ttt_ablation.png", "generation.png"):
        assert (arena_run / png).stat().st_size > 1000


def test_micro_arena_results_are_finite_and_complete(arena_run):
    results = json.loads((arena_run / "results.json").read_text())
    archs = set(ARCHS.split(","))
    assert {r["arch"] for r in results["lm"]} == archs
    assert {(r["arch"], r["seed"]) for r in results["lm"]} == {(a, s) for a in archs for s in (0, 1)}
    assert {r["arch"] for r in results["speed"] if r["kind"] == "context"} == archs
    assert {r["round"] for r in results["speed"] if r["kind"] == "context"} == {0, 1}
    assert results["recall"] and results["prompt_order"] and results["kan"] and results["theory"]
    assert results["meta"]["commit"]
    numbers = list(_numbers(results))
    assert len(numbers) > 100
    bad = [(p, v) for p, v in numbers if not math.isfinite(v)]
    assert not bad, f"non-finite numbers: {bad[:5]}"
    for r in results["lm"]:
        assert 0 < r["val_bpb"] < 9 and r["params"] > 0
        assert r["position"]["positions"][-1] == 64  # micro's eval_len


def test_every_claim_is_judged_and_the_report_shows_the_computed_verdicts(arena_run):
    results = json.loads((arena_run / "results.json").read_text())
    assert [row["id"] for row in results["claims"]] == [c.id for c in CLAIMS]
    assert {row["verdict"] for row in results["claims"]} <= set(VERDICTS)
    assert judge_all(results) == results["claims"]  # recomputed from the stored numbers: the same verdicts
    report = (arena_run / "report.md").read_text()
    for row in results["claims"]:
        assert f"| {row['id']} | {row['claim']} |" in report and f"**{row['verdict']}**" in report


def test_the_default_ttt_variant_is_the_language_model_itself(arena_run):
    results = json.loads((arena_run / "results.json").read_text())
    lm = {r["seed"]: r for r in results["lm"] if r["arch"] == "ttt_linear"}
    b16 = {r["seed"]: r for r in results["ttt"] if r["variant"] == "mamba b=16"}
    assert set(b16) == set(lm) and all(b16[s]["val_bpb"] == lm[s]["val_bpb"] for s in lm)
    lm_files = list((arena_run / "cells").glob("lm-ttt_linear-s0-*.json"))
    assert len(lm_files) == 4  # the default, b = 4, b = T and the Transformer backbone; no second b = 16 cell


def test_rerun_recomputes_nothing_and_report_only_renders(arena_run, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise AssertionError("a cached cell was recomputed")

    for name in ("lm_cell", "recall_cell", "speed_cell"):
        monkeypatch.setattr(cells, name, fail)
    before = (arena_run / "results.json").read_text()
    assert main(["arena", "--preset", "micro", "--mixers", ARCHS, "--out", str(arena_run)]) == 0
    assert "0 cached" not in capsys.readouterr().out
    after = json.loads((arena_run / "results.json").read_text())
    assert after["lm"] == json.loads(before)["lm"]
    assert main(["arena", "--preset", "micro", "--mixers", ARCHS, "--out", str(arena_run), "--report-only"]) == 0


def test_a_missing_cell_alone_is_recomputed(arena_run, monkeypatch):
    victim = next((arena_run / "cells").glob("recall-gla-*.json"))
    victim.unlink()
    calls = []
    real = cells.recall_cell

    def counting(*args, **kwargs):
        calls.append(args[0].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(cells, "recall_cell", counting)
    monkeypatch.setattr(cells, "lm_cell", lambda *a, **k: pytest.fail("lm cell recomputed"))
    monkeypatch.setattr(cells, "speed_cell", lambda *a, **k: pytest.fail("speed cell recomputed"))
    assert main(["arena", "--preset", "micro", "--mixers", ARCHS, "--out", str(arena_run)]) == 0
    assert calls == ["gla"] and victim.exists()


def test_unknown_arena_inputs_are_named():
    with pytest.raises(ValueError, match="unknown"):
        from seqmix.arena.plan import select_archs
        select_archs(["transformerz"])
    assert main(["arena", "--preset", "micro", "--sections", "lm,bogus"]) == 2


def test_the_arena_on_another_corpus_and_tokenizer_names_them_in_the_report(tmp_path, corpus_dir, arena_run,
                                                                             capsys):
    pytest.importorskip("tokenizers")
    out = tmp_path / "arena"
    args = ["arena", "--preset", "micro", "--mixers", "attention", "--sections", "lm", "--out", str(out),
            "--corpus", corpus_dir, "--tokenizer", "bpe:300"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    data = results["meta"]["data"]
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert data["name"] == corpus_dir and data["tokenizer"] == "bpe:300" and data["vocab_size"] == 300
    assert data["sha256"] == manifest["source"]["sha256"] and data["tokenizer_sha256"] == manifest["tokenizer"]["sha256"]
    report = (out / "report.md").read_text()
    assert f"`{corpus_dir}` (sha256 `{data['sha256']}`)" in report and "`bpe:300` (300 ids" in report
    cells_here = {p.name for p in (out / "cells").glob("lm-attention-*.json")}
    default_cells = {p.name for p in (arena_run / "cells").glob("lm-attention-*.json")}
    assert cells_here and not cells_here & default_cells  # other data, other cells
    assert all(math.isfinite(c["val_bpb"]) and c["params"] > 0 for c in results["lm"])
    assert main(args) == 0  # the same data again: recognised, the cells are cached
    capsys.readouterr()
    assert main(args[:-1] + ["bytes"]) == 2  # this output folder holds that corpus with bpe:300
    assert "tokenizer 'bpe:300', asked 'bytes'" in capsys.readouterr().err

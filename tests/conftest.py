import pytest
import torch

# The tests use tiny tensors, for which one thread is fastest and immune to other processes' load.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

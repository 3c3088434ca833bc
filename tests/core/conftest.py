import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Small CPU steps are faster on one thread, and the machine is shared with other test processes.
    torch.set_num_threads(1)
    yield

"""Shared fixtures: identical starting weights and identical batches for both frameworks."""

import pytest
from parity_helpers import TORCH_CPU

from mnist_common.config import Config
from torch_impl import backend as torch_backend


@pytest.fixture(scope="session")
def canonical_weights():
    """torch's default initialisation under seed 0, as canonical NumPy arrays."""
    state = torch_backend.create_train_state(Config(seed=0), TORCH_CPU)
    params, _ = torch_backend.state_to_arrays(state)
    return params

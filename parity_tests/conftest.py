"""Shared fixtures: identical starting weights and identical batches for both frameworks."""

import os

import pytest
from parity_helpers import CPU

from mnist_common import data
from mnist_common.config import Config
from torch_impl import train as torch_train


@pytest.fixture(scope="session")
def canonical_weights():
    """torch's default initialisation under seed 0, as canonical NumPy arrays."""
    state = torch_train.create_train_state(Config(seed=0), CPU)
    params, _ = torch_train.state_to_arrays(state)
    return params


@pytest.fixture(scope="session")
def mnist_root():
    """The prepared real MNIST root (`make test` prepares it before pytest runs)."""
    root = data.resolve_data_dir(None)
    try:
        return data.prepare_data(root, sources=[])
    except data.DataError as err:
        if os.environ.get("CI"):  # CI prepares the data first: missing data there is a failure
            pytest.fail(f"real MNIST not prepared: {err}")
        pytest.skip(f"real MNIST not prepared ({err}); run `python -m mnist_common.data`")

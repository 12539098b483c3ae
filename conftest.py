"""The one fixture tests/ and parity_tests/ share: the prepared real MNIST root."""

import os

import pytest

from mnist_common import data


@pytest.fixture(scope="session")
def mnist_root():
    """The prepared real MNIST root (`make test` prepares it before pytest runs)."""
    try:
        return data.prepare_data(None, sources=[])
    except data.DataError as err:
        if os.environ.get("CI"):  # CI prepares the data first: missing data there is a failure
            pytest.fail(f"real MNIST not prepared: {err}")
        pytest.skip(f"real MNIST not prepared ({err}); run `python -m mnist_common.data`")

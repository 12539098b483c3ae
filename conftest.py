"""What tests/ and parity_tests/ share: the prepared real MNIST root, and the parity report's
option (registered here, at the root, so that `pytest --parity-report DIR` works from anywhere:
an option of parity_tests/conftest.py would be unknown whenever DIR is read as a test path)."""

import os

import pytest

from mnist_common import data


def pytest_addoption(parser):
    parser.addoption("--parity-report", metavar="DIR", default=None,
                     help="write the parity margins as DIR/report.md, report.json and figures")


@pytest.fixture(scope="session")
def mnist_root():
    """The prepared real MNIST root (`make test` prepares it before pytest runs)."""
    try:
        return data.prepare_data(None, sources=[])
    except data.DataError as err:
        if os.environ.get("CI"):  # CI prepares the data first: missing data there is a failure
            pytest.fail(f"real MNIST not prepared: {err}")
        pytest.skip(f"real MNIST not prepared ({err}); run `python -m mnist_common.data`")

"""Fixtures of tests/ (helpers: cli_helpers.py, training_helpers.py, disk_helpers.py,
data_helpers.py, weight_helpers.py).

`small_mnist` trims the real data so in-process runs cross epoch ends in a handful of steps;
`torch_reference` and `torch_finished` are runs on it that several topics compare against.
"""

import contextlib

import pytest
from disk_helpers import mounted_tmpfs
from training_helpers import train_config, use_small_mnist

from mnist_common import data


@pytest.fixture(scope="session")
def real_splits(mnist_root):
    """The real (train, test) arrays, read once."""
    return data.load_arrays(mnist_root, train=True), data.load_arrays(mnist_root, train=False)


@pytest.fixture
def small_mnist(real_splits, monkeypatch):
    """Training reads the first 100 training and 200 test images of the real MNIST."""
    return use_small_mnist(monkeypatch, real_splits)


@pytest.fixture(scope="session")
def torch_reference(tmp_path_factory, real_splits):
    """An uninterrupted 3-epoch torch run (21 steps) on the small set."""
    out_dir = tmp_path_factory.mktemp("torch-reference")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_small_mnist(monkeypatch, real_splits)
        train_config("torch", out_dir, epochs=3)
    return out_dir


@pytest.fixture(scope="session")
def torch_finished(tmp_path_factory, real_splits):
    """A torch run on the small set stopped by --epochs 3 --max-steps 3: finished, its
    checkpoint at step 3. Tests that may change it copy it first."""
    out_dir = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_small_mnist(monkeypatch, real_splits)
        train_config("torch", out_dir, epochs=3, max_steps=3)
    return out_dir


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(size)`: a real tmpfs of `size` (as mount's `size=`) under tmp_path (root only);
    the test is skipped where mounting is not permitted. Unmounted afterwards."""
    with contextlib.ExitStack() as stack:
        yield lambda size: stack.enter_context(mounted_tmpfs(tmp_path / "small", size))


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory):
    """Canonical weights of torch's seed-0 initialisation, as a run would write them."""
    from mnist_common.config import Config
    from mnist_common.weights import save_weights
    from torch_impl import backend

    state = backend.create_train_state(Config(), backend.select_placement("cpu"))
    path = tmp_path_factory.mktemp("weights") / "good.safetensors"
    save_weights(path, backend.state_to_arrays(state)[0])
    return path

"""Fixtures for the CLI, bad-input, checkpoint and resume tests (helpers: cli_helpers.py).

`small_mnist` trims the real data so in-process runs cross epoch ends in a handful of steps.
"""

import pytest
from cli_helpers import use_small_mnist

from mnist_common import data


@pytest.fixture(scope="session")
def real_splits(mnist_root):
    """The real (train, test) arrays, read once."""
    return data.load_arrays(mnist_root, train=True), data.load_arrays(mnist_root, train=False)


@pytest.fixture
def small_mnist(real_splits, monkeypatch):
    """Training reads the first 100 training and 200 test images of the real MNIST."""
    return use_small_mnist(monkeypatch, real_splits)


@pytest.fixture(scope="module")
def jax_compile_cache(tmp_path_factory):
    """A persistent XLA cache for this module: each new Flax train state recompiles otherwise."""
    import jax

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    previous = {name: getattr(jax.config, name) for name in names}
    jax.config.update(names[0], str(tmp_path_factory.mktemp("xla-cache")))
    jax.config.update(names[1], 0)
    jax.config.update(names[2], 0)
    yield
    for name, value in previous.items():
        jax.config.update(name, value)
    from jax._src import compilation_cache

    if hasattr(compilation_cache, "reset_cache"):
        compilation_cache.reset_cache()


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

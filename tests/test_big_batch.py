"""A batch larger than `flax_impl.backend.BIG_BATCH` takes the same step, its gradient summed in
chunks (so that a full-batch step fits in XLA:CPU's memory); here with small chunks."""

import jax
import numpy as np
import pytest

from flax_impl import backend
from mnist_common.config import Config


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_chunked_step_is_the_full_batch_step(masked, monkeypatch):
    placement = backend.select_placement("cpu")
    state = backend.create_train_state(Config(), placement)
    rng = np.random.default_rng(0)
    images = rng.random((150, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, 150).astype(np.int32)
    batch = (images, labels)
    if masked:  # a mesh-padded batch: the last 20 examples are padding
        batch = (images, labels, (np.arange(150) < 130).astype(np.float32))
    plain_state, plain = backend.train_step(state, batch)
    monkeypatch.setattr(backend, "BIG_BATCH", 64)  # 150 examples: chunks of 64, 64, 22 (+ pad)
    jax.clear_caches()
    chunked_state, chunked = backend.train_step(state, batch)
    jax.clear_caches()
    assert abs(float(chunked["loss"]) - float(plain["loss"])) <= 1e-6
    # One Adam step moves each weight by about lr; the chunked sums may only move it by
    # float32 rounding of the update, far below it.
    for a, b in zip(jax.tree_util.tree_leaves(chunked_state.params),
                    jax.tree_util.tree_leaves(plain_state.params), strict=True):
        assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= 1e-6
    grads_moved = [np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in zip(
        jax.tree_util.tree_leaves(plain_state.params), jax.tree_util.tree_leaves(state.params),
        strict=True)]
    assert min(grads_moved) > 1e-5  # the step did move every tensor (lr 2e-4)

"""JAX_ENABLE_X64=1 in the environment does not change Flax's numbers: the engine computes in
float32 whatever the environment says (it turns 64-bit mode off, and says so on stderr).

In-process, `jax_enable_x64` set on is what JAX_ENABLE_X64=1 sets at import; with it left on, the
weights' bytes after three steps differ (measured), so this test can fail.
"""

import jax
import numpy as np

from mnist_common.config import Config


def weights_after_three_steps():
    """The canonical weights of the Flax engine after three steps on fixed random batches."""
    from flax_impl import backend

    placement = backend.select_placement("cpu")
    state = backend.create_train_state(Config(), placement)
    rng = np.random.default_rng(0)
    images = (rng.integers(0, 256, (3, 16, 1, 28, 28)) / 255).astype(np.float32)
    labels = rng.integers(0, 10, (3, 16))
    state, _ = backend.train_steps(state, [backend.place_batch(placement, x, y)
                                           for x, y in zip(images, labels, strict=True)])
    return backend.state_to_arrays(state)[0]


def test_flax_weights_are_the_same_bits_with_jax_enable_x64(capsys):
    expected = weights_after_three_steps()
    capsys.readouterr()
    jax.config.update("jax_enable_x64", True)
    try:
        actual = weights_after_three_steps()
    finally:
        jax.config.update("jax_enable_x64", False)
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key].dtype == np.float32, key
        assert actual[key].tobytes() == expected[key].tobytes(), key
    assert capsys.readouterr().err == ("flax: JAX_ENABLE_X64 ignored: the engine computes in "
                                       "float32\n")

"""Each framework's own initialisation: Flax's draws have torch's distribution, layer by layer.

Every training parity test starts both frameworks from torch's weights; this is the check of
the weights Flax draws itself (`flax_impl.backend.create_train_state`). Over DRAWS seeds, each
layer's weights (and biases) pooled, a two-sample Kolmogorov-Smirnov test against torch's own
draws (`torch_impl.backend.create_train_state`, the same seeds). The statistic and its
asymptotic p-value are written out below in NumPy. Every draw is seeded, so the p-values are
fixed numbers; a layer fails below P_MIN. Ten layers at 1e-3: a correct initialiser would fail
one of them by chance with probability about 1 % for a given set of seeds. Flax's default
initialisers (LeCun normal kernels, zero biases) give p-values of 0 to double precision.
"""

import jax
import numpy as np
import pytest
from margins import check
from parity_helpers import FLAX_CPU, TORCH_CPU

from flax_impl import backend as flax_backend
from mnist_common.config import Config
from mnist_common.weights import CANONICAL_SHAPES
from torch_impl import backend as torch_backend

DRAWS = 20  # seeds per framework: the smallest layer (fc_layer.2.bias) pools 200 values
P_MIN = 1e-3


def ks_statistic(a, b):
    """sup_x |F_a(x) - F_b(x)| of the two empirical distribution functions."""
    a, b = np.sort(np.ravel(a)), np.sort(np.ravel(b))
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def ks_p_value(statistic, n, m):
    """Asymptotic two-sample p-value: Q(lambda) = 2 sum_k (-1)^(k-1) exp(-2 k^2 lambda^2), with
    Stephens' small-sample correction lambda = (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) D,
    ne = n m / (n + m) (Numerical Recipes, 3rd ed., 14.3.3)."""
    ne = n * m / (n + m)
    lam = (np.sqrt(ne) + 0.12 + 0.11 / np.sqrt(ne)) * statistic
    if lam < 0.2:  # the series converges slowly here, and Q > 0.99999
        return 1.0
    k = np.arange(1, 101)
    return float(np.clip(2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * lam**2)), 0, 1))


def draws(create, to_arrays, placement):
    """{key: (DRAWS, *shape)} of one framework's own initial weights for seeds 0..DRAWS-1."""
    arrays = [to_arrays(create(Config(seed=seed), placement))[0] for seed in range(DRAWS)]
    return {key: np.stack([a[key] for a in arrays]) for key in CANONICAL_SHAPES}


@pytest.fixture(scope="module")
def torch_draws():
    return draws(torch_backend.create_train_state, torch_backend.state_to_arrays, TORCH_CPU)


@pytest.fixture(scope="module")
def flax_draws():
    return draws(flax_backend.create_train_state, flax_backend.state_to_arrays, FLAX_CPU)


def bound_of(key):
    """torch's default: weights and biases U(+-1/sqrt(fan_in))."""
    fan_in = int(np.prod(CANONICAL_SHAPES[key.replace("bias", "weight")][1:]))
    return 1 / np.sqrt(fan_in)


def test_flax_draws_have_torchs_distribution_in_every_layer(torch_draws, flax_draws):
    failed = []
    for key in CANONICAL_SHAPES:
        ours, theirs = flax_draws[key], torch_draws[key]
        p = ks_p_value(ks_statistic(ours, theirs), ours.size, theirs.size)
        check(f"init: Flax vs torch, {key}, KS p-value over {DRAWS} seeds", p, P_MIN,
              kind="floor", group="init")
        reach = np.abs(ours).max() / bound_of(key)
        check(f"init: Flax {key}, max |w| / (1 / sqrt(fan_in))", reach, 1.0, group="init")
        if p < P_MIN or reach > 1:
            failed.append(key)
        assert len({a.tobytes() for a in ours}) == DRAWS, key  # each seed its own draw
    assert not failed


def test_the_distribution_test_can_fail(torch_draws):
    # Guard: Flax's own defaults (LeCun-normal kernels, zero biases) in torch's layouts.
    for seed, key in enumerate(k for k in CANONICAL_SHAPES if k.endswith("weight")):
        shape = CANONICAL_SHAPES[key]
        flax_shape = shape[2:] + shape[1::-1] if len(shape) == 4 else shape[::-1]
        kernels = [jax.nn.initializers.lecun_normal()(jax.random.PRNGKey(seed * 100 + s),
                                                      flax_shape) for s in range(DRAWS)]
        ours = np.stack([np.asarray(kernel) for kernel in kernels])
        p = ks_p_value(ks_statistic(ours, torch_draws[key]), ours.size, torch_draws[key].size)
        assert p < P_MIN, (key, p)


def test_ks_p_value_matches_known_values():
    # Q(lambda) at lambda = 1.36 is 0.05 and at 1.63 is 0.01 (the classical critical values).
    big = 10**8  # ne -> n / 2 large: the correction vanishes
    assert abs(ks_p_value(1.358 / np.sqrt(big / 2), big, big) - 0.05) < 1e-3
    assert abs(ks_p_value(1.628 / np.sqrt(big / 2), big, big) - 0.01) < 1e-3
    rng = np.random.default_rng(0)
    assert ks_statistic(rng.random(1000), rng.random(1000) * 0.5) > 0.4


def test_the_engines_draws_are_flax_inits_own():
    """The engine draws its initial weights in one jitted program; they are, bit for bit, what
    Flax's `init` of the module gives run eagerly, op by op (what a Flax user writes)."""
    from flax_impl.model import CNN

    for seed in (0, 1):
        params = flax_backend.create_train_state(Config(seed=seed), FLAX_CPU).params
        _, init_rng = jax.random.split(jax.random.PRNGKey(seed))
        eager = CNN().init(init_rng, np.ones((1, 28, 28, 1), np.float32))["params"]
        pairs = zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(eager),
                    strict=True)
        for (path, ours), theirs in pairs:
            assert np.array_equal(np.asarray(ours), np.asarray(theirs)), jax.tree_util.keystr(path)

"""The referee's bounds are their derivations, worked by hand on tiny inputs: a bound made wider
(or narrower) than its error model fails here, even where it would still reject a 1 % error."""

import math

import numpy as np
import pytest
from by_hand import loop_conv
from referee import adam, bounds, layers, network
from referee.bounds import U

from mnist_common.weights import CANONICAL_SHAPES


def test_gamma_and_its_probabilistic_form():
    assert bounds.gamma(26) == pytest.approx(26 * U / (1 - 26 * U), rel=1e-15)
    n = 64 * 24 * 24  # a first-layer kernel gradient's terms
    assert layers.probable_gamma(n) == pytest.approx(math.expm1(8 * 192 * U + n * U * U / (1 - U)),
                                                     rel=1e-12)
    assert layers.probable_gamma(n) < bounds.gamma(n) / 20
    assert layers.probable_gamma(16) == bounds.gamma(16)  # the worst case is smaller there
    # Higham and Mary's failure probability at lambda = 8 and n = 36,864, per element.
    assert 2 * n * math.exp(-(8 * (1 - U)) ** 2 / 2) < 1e-9


@pytest.fixture
def tiny():
    """Random weights of the real shapes, 2 images, and outputs and gradients for them."""
    rng = np.random.default_rng(9)
    params = {key: rng.uniform(-0.2, 0.2, shape) for key, shape in CANONICAL_SHAPES.items()}
    x = rng.integers(0, 256, (2, 1, 28, 28)) / 255
    shapes = {"z1": (2, 16, 24, 24), "z2": (2, 32, 20, 20), "z3": (2, 64, 6, 6), "z4": (2, 100),
              "z5": (2, 10)}
    z = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    dz = {name: rng.standard_normal(shape) * 1e-3 for name, shape in shapes.items()}
    return params, x, z, dz, layers.references(params, x, z, dz, np.array([1, 4]))


def test_a_layers_output_bound_is_gamma_of_its_fan_in_times_its_absolute_terms(tiny):
    params, x, z, _, alone = tiny
    kernel, bias = params["layer.0.weight"], params["layer.0.bias"]
    by_hand = bounds.gamma(26) * (loop_conv(np.abs(x), np.abs(kernel)) +
                                  np.abs(bias)[:, None, None])
    np.testing.assert_allclose(alone["z1"][1], by_hand, rtol=1e-12)
    a4, weight = np.maximum(z["z4"], 0), params["fc_layer.2.weight"]
    np.testing.assert_allclose(alone["z5"][1], bounds.gamma(101) * (
        np.abs(a4) @ np.abs(weight).T + np.abs(params["fc_layer.2.bias"])), rtol=1e-12)


def test_a_bias_gradients_bound_is_the_probabilistic_gamma_of_its_batch_sum(tiny):
    _, _, _, dz, alone = tiny
    for name, key, axes in (("z1", "layer.0", (0, 2, 3)), ("z3", "layer.5", (0, 2, 3)),
                            ("z5", "fc_layer.2", 0)):
        terms = dz[name].size // dz[name].shape[1]
        np.testing.assert_allclose(alone[f"{key}.bias"][1], layers.probable_gamma(terms) *
                                   np.abs(dz[name]).sum(axes), rtol=1e-12, err_msg=key)


def test_adams_first_step_moment_bounds():
    # m = (1 - b1) g: 1 - b1 from float32's b1 is off by u (b1 / (1 - b1) + 1) = 10u relative,
    # then the product and the sum round: 12u of (1 - b1)|g|. v likewise with b2: 1003u.
    grads = {"w": np.array([3.0, -2e-8, 0.0], np.float32)}
    state = adam.step(adam.init({"w": np.array([0.5, -0.1, 0.2], np.float32)}), grads)
    g = np.abs(grads["w"].astype(np.float64))
    np.testing.assert_allclose(state.err_m["w"], 0.1 * g * 12 * U, rtol=1e-9)
    np.testing.assert_allclose(state.err_v["w"], 0.001 * g * g * 1003 * U, rtol=1e-9)


def test_the_whole_pass_bounds_of_the_first_layer_and_the_last_bias(tiny):
    params, x, _, _, _ = tiny
    labels = np.array([1, 4])
    acts = network.forward(params, x)
    err = bounds.forward_bounds(params, acts)
    kernel = np.abs(params["layer.0.weight"])
    # The pixels are fl(k / 255), within u x; then conv 1's own rounding of 26 terms.
    by_hand = U * loop_conv(x, kernel) + bounds.gamma(26) * (
        loop_conv(x * (1 + U), kernel) + np.abs(params["layer.0.bias"])[:, None, None])
    np.testing.assert_allclose(err["z1"], by_hand, rtol=1e-12)
    # fc_layer.2.bias's gradient sums dz5 over the batch: dz5's own bound plus gamma_N.
    _, d = network.backward(params, acts, labels)
    e_dz5 = bounds.logits_grad_bound(acts, err, labels)
    np.testing.assert_allclose(
        bounds.gradient_bounds(params, acts, d, err, labels)["fc_layer.2.bias"],
        e_dz5.sum(0) + bounds.gamma(2) * (np.abs(d["z5"]) + e_dz5).sum(0), rtol=1e-12)

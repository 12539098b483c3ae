"""The referee's bounds are their derivations, worked by hand on tiny inputs: a bound made wider
(or narrower) than its error model fails here, even where it would still reject a 1 % error."""

import itertools
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


def test_adams_first_step_weight_bound():
    """g = 3 from w = 0.5, in units of u: m_hat = m / (1 - b1) is off by 3.6 / 0.1 = 36 and the
    correction's own 28 + 1 per |m_hat| = 3, 123 in all; v_hat by 9.027 / 0.001 = 9027 and
    2998 + 1 per v_hat = 9, 36,018; sqrt halves it per root = 3, 6003, plus 3; the denominator
    3 more; the update lr m_hat / denom is off by lr (123 / 3 + 3 x 6009 / 9) and 3 roundings,
    lr x 2047; the new weight adds 1 per |w|."""
    state = adam.step(adam.init({"w": np.array([0.5], np.float32)}),
                      {"w": np.array([3.0], np.float32)})
    new_weight = 0.5 - adam.LR * 3 / (3 + adam.EPS)
    np.testing.assert_allclose(state.err_params["w"], U * (adam.LR * 2047 + new_weight),
                               rtol=1e-6)


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


def test_the_input_gradient_bounds_are_gamma_of_their_fan_out(tiny):
    """A linear or convolution layer's input gradient sums over its outputs (10, and 32 x 25 for
    conv 2): gamma of that count times the sum of |gradient| |weight|, masked by the ReLU below."""
    params, _, z, dz, alone = tiny
    weight = np.abs(params["fc_layer.2.weight"])  # (10, 100)
    by_hand = np.zeros((2, 100))
    for n, k, j in itertools.product(range(2), range(10), range(100)):
        by_hand[n, j] += abs(dz["z5"][n, k]) * weight[k, j]
    np.testing.assert_allclose(alone["dz4"][1], bounds.gamma(10) * by_hand * (z["z4"] > 0),
                               rtol=1e-12)
    kernel, grad = np.abs(params["layer.2.weight"]), np.abs(dz["z2"])  # (32, 16, 5, 5)
    spread = np.zeros((2, 16, 24, 24))
    for i, j in itertools.product(range(5), range(5)):  # each kernel tap, every position
        spread[:, :, i:i + 20, j:j + 20] += np.einsum("nohw,oc->nchw", grad, kernel[:, :, i, j])
    np.testing.assert_allclose(alone["dz1"][1], bounds.gamma(32 * 25) * spread * (z["z1"] > 0),
                               rtol=1e-12)


def test_the_loss_and_logit_gradient_bounds_are_the_softmaxs_roundings(tiny):
    """From the framework's own logits: each example's loss log s - d_y carries p's rounding
    (3u per |d| of the row's width, 4u per |log s|, 11u, gamma_9 for the 10-term sum) and u of
    itself, the batch mean gamma_N more; the logits' gradient (p - one_hot) / N carries p's
    rounding and 2u of itself."""
    _, _, z, _, alone = tiny
    logits, labels = z["z5"], np.array([1, 4])
    loss_bound, grad_bound = 0.0, np.zeros((2, 10))
    for n in range(2):
        d = logits[n] - logits[n].max()
        log_s = math.log(sum(math.exp(v) for v in d))
        rho = U * (3 * max(abs(v) for v in d) + 4 * abs(log_s) + 11) + bounds.gamma(9)
        example = log_s - d[labels[n]]
        loss_bound += (rho + U * abs(example) + bounds.gamma(2) * abs(example)) / 2
        for k in range(10):
            p = math.exp(d[k] - log_s)
            grad_bound[n, k] = (p * rho + 2 * U * abs(p - (k == labels[n]))) / 2
    assert alone["loss"][1] == pytest.approx(loss_bound, rel=1e-12)
    np.testing.assert_allclose(alone["dz5"][1], grad_bound, rtol=1e-12)


def test_a_weight_gradients_bound_is_the_gamma_of_its_batch_sum(tiny):
    """A weight gradient sums over the batch (and a kernel's over the positions too): the
    probabilistic gamma of that count times sum |terms|."""
    _, _, z, dz, alone = tiny
    a4, by_hand = np.maximum(z["z4"], 0), np.zeros((10, 100))
    for n, k, j in itertools.product(range(2), range(10), range(100)):
        by_hand[k, j] += abs(dz["z5"][n, k]) * a4[n, j]
    np.testing.assert_allclose(alone["fc_layer.2.weight"][1],
                               layers.probable_gamma(2) * by_hand, rtol=1e-12)
    # layer.5's kernel gradient sums dz3 x p2 over 2 examples x 6 x 6 positions per tap.
    a2 = np.maximum(z["z2"], 0)
    p2 = a2.reshape(2, 32, 10, 2, 10, 2).max(axis=(3, 5))
    kernel = np.zeros((64, 32, 5, 5))
    for i, j in itertools.product(range(5), range(5)):
        kernel[:, :, i, j] = np.einsum("nohw,nchw->oc", np.abs(dz["z3"]),
                                       p2[:, :, i:i + 6, j:j + 6])
    np.testing.assert_allclose(alone["layer.5.weight"][1],
                               layers.probable_gamma(2 * 6 * 6) * kernel, rtol=1e-12)


def test_a_pooled_input_gradients_bound_goes_to_each_windows_maximum(tiny):
    """Conv 3's input gradient bound (gamma of 64 x 25 outputs) reaches, through the max-pool,
    only the maximum of each 2x2 window of a2 (no ties in random inputs), then the ReLU's mask."""
    params, _, z, dz, alone = tiny
    kernel, grad = np.abs(params["layer.5.weight"]), np.abs(dz["z3"])  # (64, 32, 5, 5)
    spread = np.zeros((2, 32, 10, 10))
    for i, j in itertools.product(range(5), range(5)):
        spread[:, :, i:i + 6, j:j + 6] += np.einsum("nohw,oc->nchw", grad, kernel[:, :, i, j])
    a2, by_hand = np.maximum(z["z2"], 0), np.zeros((2, 32, 20, 20))
    for n, c, h, w in itertools.product(range(2), range(32), range(10), range(10)):
        window = a2[n, c, 2 * h:2 * h + 2, 2 * w:2 * w + 2]
        r, s = np.unravel_index(window.argmax(), (2, 2))
        by_hand[n, c, 2 * h + r, 2 * w + s] = spread[n, c, h, w]
    np.testing.assert_allclose(alone["dz2"][1], bounds.gamma(64 * 25) * by_hand * (z["z2"] > 0),
                               rtol=1e-12)


def test_the_whole_pass_carries_a_bound_through_relu_and_max_pool_unchanged(tiny):
    """ReLU and max-pool are 1-Lipschitz and exact in float32: a2's bound is z2's where z2 may
    be positive (0 where z2 < -bound), and p2's is the largest of its window's."""
    params, x, _, _, _ = tiny
    acts = network.forward(params, x)
    err = bounds.forward_bounds(params, acts)
    z2, e_z2 = acts["z2"], err["z2"]
    for n, c, h, w in itertools.product(range(2), range(32), range(10), range(10)):
        rows, cols = slice(2 * h, 2 * h + 2), slice(2 * w, 2 * w + 2)
        a_bound = np.where(z2[n, c, rows, cols] < -e_z2[n, c, rows, cols], 0.0,
                           e_z2[n, c, rows, cols])
        np.testing.assert_array_equal(err["a2"][n, c, rows, cols], a_bound)
        assert err["p2"][n, c, h, w] == a_bound.max()

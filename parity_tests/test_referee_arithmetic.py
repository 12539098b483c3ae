"""The referee's own arithmetic against computations independent of it, on tiny inputs: the
convolution and max-pool against their definitions written as loops, the convolution's two
gradients against the transpose of the convolution's own matrix, and every gradient of the
network against central finite differences in float64."""

import itertools

import numpy as np
import pytest
from by_hand import loop_conv, matrix_of
from referee import layers, network

from mnist_common.weights import CANONICAL_SHAPES

RNG_SEED = 5


@pytest.fixture
def rng():
    return np.random.default_rng(RNG_SEED)


def test_conv_is_the_loop_formula(rng):
    x, kernel = rng.standard_normal((2, 3, 8, 9)), rng.standard_normal((4, 3, 5, 5))
    np.testing.assert_allclose(network.conv(x, kernel), loop_conv(x, kernel), rtol=1e-12,
                               atol=1e-12)


def test_conv_gradients_are_the_transposed_matrices(rng):
    x, kernel = rng.standard_normal((2, 2, 7, 6)), rng.standard_normal((3, 2, 5, 5))
    dout = rng.standard_normal((2, 3, 3, 2))
    by_input = matrix_of(lambda v: loop_conv(v, kernel), x.shape)
    by_kernel = matrix_of(lambda k: loop_conv(x, k), kernel.shape)
    np.testing.assert_allclose(network.conv_input_grad(dout, kernel).ravel(),
                               by_input.T @ dout.ravel(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(network.conv_weight_grad(dout, x).ravel(),
                               by_kernel.T @ dout.ravel(), rtol=1e-12, atol=1e-12)


def test_max_pool_and_its_gradient_are_the_loop_formula(rng):
    x, dout = rng.standard_normal((2, 3, 6, 4)), rng.standard_normal((2, 3, 3, 2))
    pooled, grad = network.pool_windows(x).max(axis=-1), network.maxpool_grad(dout, x)
    expected_grad = np.zeros_like(x)
    for b, c, r, s in itertools.product(range(2), range(3), range(3), range(2)):
        window = x[b, c, 2 * r:2 * r + 2, 2 * s:2 * s + 2]
        assert pooled[b, c, r, s] == window.max()
        i, j = np.unravel_index(np.argmax(window), (2, 2))
        expected_grad[b, c, 2 * r + i, 2 * s + j] = dout[b, c, r, s]
    np.testing.assert_array_equal(grad, expected_grad)


def test_softmax_loss_and_logits_gradient(rng):
    logits, labels = rng.standard_normal((4, 10)) * 3, np.array([0, 3, 9, 3])
    exp = np.exp(logits)
    np.testing.assert_allclose(network.softmax(logits), exp / exp.sum(1, keepdims=True),
                               rtol=1e-13)
    expected_loss = np.mean([np.log(exp[i].sum()) - logits[i, y] for i, y in enumerate(labels)])
    assert network.loss(logits, labels) == pytest.approx(expected_loss, rel=1e-13)
    step, numeric = 1e-6, np.zeros_like(logits)
    for index in np.ndindex(*logits.shape):
        shift = np.zeros_like(logits)
        shift[index] = step
        numeric[index] = (network.loss(logits + shift, labels) -
                          network.loss(logits - shift, labels)) / (2 * step)
    np.testing.assert_allclose(network.logits_grad(logits, labels), numeric, atol=1e-9)


@pytest.fixture
def tiny_network(rng):
    """Weights (torch's init scale), two random images and labels; the forward and backward."""
    params = {key: rng.uniform(-1, 1, shape) / np.sqrt(np.prod(shape[1:]) if len(shape) > 1
                                                      else shape[0])
              for key, shape in CANONICAL_SHAPES.items()}
    x, labels = rng.random((2, 1, 28, 28)), np.array([3, 7])
    acts = network.forward(params, x)
    grads, d = network.backward(params, acts, labels)
    return params, x, labels, acts, grads, d


def test_every_gradient_is_the_finite_difference(tiny_network, rng):
    params, x, labels, _, grads, _ = tiny_network
    step = 1e-6
    for key, shape in CANONICAL_SHAPES.items():
        for index in {tuple(int(rng.integers(s)) for s in shape) for _ in range(3)}:
            plus, minus = dict(params), dict(params)
            plus[key], minus[key] = params[key].copy(), params[key].copy()
            plus[key][index] += step
            minus[key][index] -= step
            numeric = (network.loss(network.forward(plus, x)["z5"], labels) -
                       network.loss(network.forward(minus, x)["z5"], labels)) / (2 * step)
            assert grads[key][index] == pytest.approx(numeric, rel=1e-5, abs=1e-9), (key, index)


def test_each_layer_alone_is_the_whole_pass_fed_its_own_values(tiny_network):
    params, x, labels, acts, grads, d = tiny_network
    z = {name: acts[name] for name in ("z1", "z2", "z3", "z4", "z5")}
    alone = layers.references(params, x, z, {name: d[name] for name in z}, labels)
    expected = {**z, "loss": network.loss(acts["z5"], labels), **grads,
                **{f"d{name}": d[name] for name in z}}
    assert alone.keys() == expected.keys()
    for name, (exact, bound) in alone.items():
        np.testing.assert_allclose(exact, expected[name], rtol=1e-12, atol=1e-15, err_msg=name)
        assert np.all(np.asarray(bound) >= 0), name

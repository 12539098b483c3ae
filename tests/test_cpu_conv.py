"""flax_impl.cpu_conv: the CPU convolution and pool match lax and Flax, and the CPU uses them."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax import lax

from flax_impl import backend as flax_backend
from flax_impl import cpu_conv
from flax_impl.model import CNN
from mnist_common.config import Config

NHWC = ("NHWC", "HWIO", "NHWC")
FORWARD_RTOL = 5e-7  # relative to the output's largest entry
GRAD_RTOL = 1e-6  # relative to each gradient's largest entry
MODEL_RTOL = 1e-5  # whole CNN, custom vs stock module, same params

# The model's three convolutions: (input height = width, input channels, output channels).
LAYERS = {"layer_0": (28, 1, 16), "layer_2": (24, 16, 32), "layer_5": (10, 32, 64)}
# layer_0 (one input channel) is left to XLA's convolution, which is fast there.
CUSTOM = {"layer_0": False, "layer_2": True, "layer_5": True}


def layer_inputs(name, batch, seed=0):
    """Inputs like the model's: pixels in [0, 1] or ReLU outputs; torch-default-init kernels.

    NumPy draws them: jax.random would compile its kernels again for every shape."""
    size, cin, cout = LAYERS[name]
    rng = np.random.default_rng(seed)
    if cin == 1:
        x = rng.random((batch, size, size, cin), np.float32)
    else:
        x = np.maximum(rng.standard_normal((batch, size, size, cin), np.float32), 0)
    bound = 1 / math.sqrt(cin * 25)
    w = rng.uniform(-bound, bound, (5, 5, cin, cout)).astype(np.float32)
    g = rng.standard_normal((batch, size - 4, size - 4, cout), np.float32)
    return jnp.asarray(x), jnp.asarray(w), jnp.asarray(g)


def lax_conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC)


def cpu_conv_model_call(x, w):
    """Called exactly as flax 0.12's nn.Conv calls it (positional strides and padding)."""
    return cpu_conv.conv_general_dilated(
        x, w, (1, 1), "VALID", lhs_dilation=(1, 1), rhs_dilation=(1, 1),
        dimension_numbers=lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2)),
        feature_group_count=1, precision=None)


def relative_error(actual, expected):
    expected = np.asarray(expected)
    return np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max()


def uses_custom_path(fn, *args):
    return "custom_vjp_call" in str(jax.make_jaxpr(fn)(*args))


# 256: the training batch (every layer chunked); 37: chunks plus a remainder; 1: a single image.
@pytest.mark.parametrize("batch", [256, 37, 1])
@pytest.mark.parametrize("name", list(LAYERS))
def test_forward_equals_lax(name, batch):
    x, w, _ = layer_inputs(name, batch)
    assert uses_custom_path(cpu_conv_model_call, x, w) == CUSTOM[name]
    actual = jax.jit(cpu_conv_model_call)(x, w)
    expected = jax.jit(lax_conv)(x, w)
    assert actual.shape == expected.shape and actual.dtype == jnp.float32
    assert relative_error(actual, expected) <= FORWARD_RTOL
    if not CUSTOM[name]:
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("batch", [256, 37])
@pytest.mark.parametrize("name", list(LAYERS))
def test_vjp_equals_lax(name, batch):
    # The weight gradient sums batch x 400 (or x 36) products per entry; XLA's own sum is itself
    # ~5e-7 (relative) from the float64 value, the chunked GEMM's ~2.5e-7, so 1e-6 has room.
    x, w, g = layer_inputs(name, batch, seed=1)

    def vjp(conv):
        return jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g))(x, w, g)

    dx, dw = vjp(cpu_conv_model_call)
    ref_dx, ref_dw = vjp(lax_conv)
    assert dx.shape == x.shape and dw.shape == w.shape
    assert relative_error(dx, ref_dx) <= GRAD_RTOL
    assert relative_error(dw, ref_dw) <= GRAD_RTOL


@pytest.mark.parametrize("kwargs", [
    {"window_strides": (1, 1), "padding": "SAME"},
    {"window_strides": (2, 2), "padding": "VALID"},
    {"window_strides": (1, 1), "padding": ((1, 1), (0, 0))},
    {"window_strides": (1, 1), "padding": "VALID", "rhs_dilation": (2, 2)},
    {"window_strides": (1, 1), "padding": ((0, 0), (0, 0)), "lhs_dilation": (2, 1)},
])
def test_unspecialised_cases_fall_back_to_lax(kwargs):
    x, w, _ = layer_inputs("layer_2", 3)
    args = dict(kwargs, dimension_numbers=NHWC)

    def custom(x, w):
        return cpu_conv.conv_general_dilated(x, w, **args)

    def stock(x, w):
        return lax.conv_general_dilated(x, w, **args)

    assert not uses_custom_path(custom, x, w)
    np.testing.assert_array_equal(jax.jit(custom)(x, w), jax.jit(stock)(x, w))


def test_other_layouts_and_groups_fall_back_to_lax():
    x, w, _ = layer_inputs("layer_2", 2)
    nchw, oihw = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
    custom = cpu_conv.conv_general_dilated(nchw, oihw, (1, 1), "VALID")  # lax's default NCHW
    np.testing.assert_array_equal(custom, lax.conv_general_dilated(nchw, oihw, (1, 1), "VALID"))
    assert not uses_custom_path(lambda a, b: cpu_conv.conv_general_dilated(a, b, (1, 1), "VALID"),
                                nchw, oihw)
    grouped = w[:, :, :8, :]
    assert not uses_custom_path(
        lambda a, b: cpu_conv.conv_general_dilated(a, b, (1, 1), "VALID",
                                                   dimension_numbers=NHWC,
                                                   feature_group_count=2), x, grouped)


def pool_inputs(shape, seed=0):
    """ReLU outputs with ties: zeros, and a band of one repeated positive value."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal(shape, np.float32), 0)
    x[:, : shape[1] // 3] = 0.25
    g = rng.standard_normal((shape[0], shape[1] // 2, shape[2] // 2, shape[3]), np.float32)
    return jnp.asarray(x), jnp.asarray(g)


@pytest.mark.parametrize("shape", [(8, 20, 20, 32), (8, 6, 6, 64), (3, 4, 4, 1)])
def test_max_pool_equals_flax_bit_for_bit(shape):
    x, g = pool_inputs(shape)

    def pool_vjp(pool):
        def f(x, g):
            y, back = jax.vjp(lambda x: pool(x, window_shape=(2, 2), strides=(2, 2)), x)
            return y, back(g)[0]
        return jax.jit(f)(x, g)

    y, dx = pool_vjp(cpu_conv.max_pool)
    ref_y, ref_dx = pool_vjp(nn.max_pool)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(dx, ref_dx)


def test_max_pool_falls_back_for_other_windows():
    x, _ = pool_inputs((2, 9, 9, 4))
    for kwargs in ({"window_shape": (2, 2), "strides": (2, 2)},  # odd size
                   {"window_shape": (3, 3), "strides": (1, 1)},
                   {"window_shape": (2, 2), "strides": (2, 2), "padding": "SAME"}):
        np.testing.assert_array_equal(cpu_conv.max_pool(x, **kwargs), nn.max_pool(x, **kwargs))


def mnist_like_batch(batch, seed=0):
    """Mostly-zero images with bright strokes (so pools see ties), and labels."""
    rng = np.random.default_rng(seed)
    images = np.zeros((batch, 28, 28, 1), np.float32)
    strokes = rng.random((batch, 16, 16, 1)) > 0.6
    images[:, 6:22, 6:22] = strokes * rng.integers(1, 256, strokes.shape) / 255
    return jnp.asarray(images), jnp.asarray(rng.integers(0, 10, batch))


def torch_like_params(shapes, seed=0):
    """U(+-1/sqrt(fan_in)) for every leaf, drawn by NumPy (no PRNG kernels to compile)."""
    rng = np.random.default_rng(seed)
    fan_in = {"layer_0": 25, "layer_2": 400, "layer_5": 800, "fc_layer_0": 576, "fc_layer_2": 100}

    def draw(path, leaf):
        bound = 1 / math.sqrt(fan_in[path[0].key])
        return jnp.asarray(rng.uniform(-bound, bound, leaf.shape).astype(np.float32))

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_cnn_with_cpu_ops_equals_stock_cnn():
    images, labels = mnist_like_batch(37)
    stock = CNN()
    custom = CNN(conv_general_dilated=cpu_conv.conv_general_dilated, max_pool=cpu_conv.max_pool)
    shapes = jax.eval_shape(stock.init, jax.random.PRNGKey(0), images[:1])["params"]
    custom_shapes = jax.eval_shape(custom.init, jax.random.PRNGKey(0), images[:1])["params"]
    assert custom_shapes == shapes
    params = torch_like_params(shapes)

    def loss_and_grads(model):
        def loss_fn(p):
            logits = model.apply({"params": p}, images)
            return flax_backend.cross_entropy(logits, labels), logits
        return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

    (loss, logits), grads = loss_and_grads(custom)
    (ref_loss, ref_logits), ref_grads = loss_and_grads(stock)
    assert relative_error(logits, ref_logits) <= MODEL_RTOL
    assert abs(float(loss) - float(ref_loss)) <= MODEL_RTOL * abs(float(ref_loss))
    for (path, grad), ref in zip(jax.tree_util.tree_leaves_with_path(grads),
                                 jax.tree_util.tree_leaves(ref_grads), strict=True):
        assert relative_error(grad, ref) <= MODEL_RTOL, jax.tree_util.keystr(path)


class FakeDevice:
    def __init__(self, platform):
        self.platform = platform


def test_create_model_picks_cpu_ops_by_platform():
    cpu_model = flax_backend.create_model(flax_backend.select_placement("cpu"))
    assert cpu_model.conv_general_dilated is cpu_conv.conv_general_dilated
    assert cpu_model.max_pool is cpu_conv.max_pool
    gpu_model = flax_backend.create_model(flax_backend.Placement(FakeDevice("gpu"), None))
    assert gpu_model.conv_general_dilated is None and gpu_model.max_pool is None
    default_model = flax_backend.create_model(flax_backend.select_placement("auto"))
    assert default_model.conv_general_dilated is cpu_conv.conv_general_dilated  # CPU-only here


def test_train_step_uses_cpu_ops_on_cpu():
    # Traced only (shapes, no compile): the jitted train step of a CPU train state.
    placement = flax_backend.select_placement("cpu")
    state = jax.eval_shape(lambda: flax_backend.create_train_state(Config(), placement))
    images, labels = mnist_like_batch(8)
    jaxpr = str(jax.make_jaxpr(flax_backend.train_step)(state, (images, labels)))
    assert "custom_vjp_call" in jaxpr
    assert "select_and_scatter" not in jaxpr and "reduce_window" not in jaxpr


def test_evaluation_uses_the_stock_forward_and_it_equals_the_cpu_one():
    # eval_step / logits run the stock module (XLA's forward is the faster one); the CPU
    # training model's forward gives the same logits to the forward tolerance.
    images, _ = mnist_like_batch(37)
    stock = CNN()
    shapes = jax.eval_shape(stock.init, jax.random.PRNGKey(0), images[:1])["params"]
    params = torch_like_params(shapes)
    assert flax_backend.INFERENCE_MODEL == stock
    cpu_model = flax_backend.create_model(flax_backend.select_placement("cpu"))
    expected = jax.jit(cpu_model.apply)({"params": params}, images)
    state = flax_backend.TrainState.create(apply_fn=stock.apply, params=params, tx=optax.sgd(0))
    actual = flax_backend.logits(state, (images,))
    assert relative_error(actual, expected) <= FORWARD_RTOL

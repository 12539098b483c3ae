"""flax_impl.xla_cpu: the engine's jitted functions compile with its options, and its pool
matches Flax's bit for bit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax import lax

from flax_impl import backend as flax_backend
from flax_impl import xla_cpu
from flax_impl.model import CNN
from mnist_common.config import Config

NHWC = ("NHWC", "HWIO", "NHWC")


def ynn_fusions(compiled_text):
    """{fusion: how many convolutions the computation it calls holds} for each YNNPACK fusion
    in compiled HLO text (YNNPACK: a kernel library XLA:CPU hands fusions to)."""
    convolutions, name = {}, None
    for line in compiled_text.splitlines():
        if line.startswith("%") and line.rstrip().endswith("{"):
            name = line.split()[0].lstrip("%")
            convolutions[name] = 0
        elif name is not None and " convolution(" in line:
            convolutions[name] += 1
    fusions = {}
    for line in compiled_text.splitlines():
        target = line.strip().removeprefix("ROOT ")
        if target.startswith("%ynn_fusion") and "calls=%" in target:
            called = target.split("calls=%", 1)[1].split(",", 1)[0].split()[0]
            fusions[target.split(" = ")[0].lstrip("%")] = convolutions.get(called, 0)
    return fusions


def convolutions_in_ynn(compiled_text):
    return sum(ynn_fusions(compiled_text).values())


def test_the_option_keeps_convolutions_out_of_ynnpack():
    # The premise of the option: without it, XLA:CPU hands this lone convolution to YNNPACK
    # (4-10x slower for this model's layers, see xla_cpu's docstring); with it, XLA runs its own.
    x = jnp.ones((2, 24, 24, 16), jnp.float32)
    w = jnp.ones((5, 5, 16, 32), jnp.float32)

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC)

    default = jax.jit(conv).lower(x, w).compile().as_text()
    optioned = xla_cpu.jit(conv).lower(x, w).compile().as_text()
    assert convolutions_in_ynn(default) == 1
    assert convolutions_in_ynn(optioned) == 0 and " convolution(" in optioned
    np.testing.assert_allclose(xla_cpu.jit(conv)(x, w), jax.jit(conv)(x, w), rtol=1e-6)


def test_jit_keeps_jax_jit_arguments():
    donated = xla_cpu.jit(lambda a: a * 2, donate_argnums=0)
    assert float(donated(jnp.ones(()))) == 2.0
    static = xla_cpu.jit(lambda a, k: a * k, static_argnums=1)
    assert float(static(jnp.ones(()), 3)) == 3.0


def pool_inputs(shape, seed=0, relu=True):
    """ReLU outputs with ties: zeros, and a band of one repeated positive value; or, without
    the ReLU, signed values (some windows all negative) with a band of one repeated negative
    value."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, np.float32)
    x = np.maximum(x, 0) if relu else x - 1.0
    x[:, : shape[1] // 3] = 0.25 if relu else -0.75
    g = rng.standard_normal((shape[0], shape[1] // 2, shape[2] // 2, shape[3]), np.float32)
    return jnp.asarray(x), jnp.asarray(g)


@pytest.mark.parametrize("relu", [True, False], ids=["relu-outputs", "signed"])
@pytest.mark.parametrize("shape", [(8, 20, 20, 32), (8, 6, 6, 64), (3, 4, 4, 1)])
def test_max_pool_equals_flax_bit_for_bit(shape, relu):
    x, g = pool_inputs(shape, relu=relu)

    def pool_vjp(pool):
        def f(x, g):
            y, back = jax.vjp(lambda x: pool(x, window_shape=(2, 2), strides=(2, 2)), x)
            return y, back(g)[0]
        return jax.jit(f)(x, g)

    y, dx = pool_vjp(xla_cpu.max_pool)
    ref_y, ref_dx = pool_vjp(nn.max_pool)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(dx, ref_dx)


def test_max_pool_falls_back_for_other_windows():
    x, _ = pool_inputs((2, 9, 9, 4))
    for kwargs in ({"window_shape": (2, 2), "strides": (2, 2)},  # odd size
                   {"window_shape": (3, 3), "strides": (1, 1)},
                   {"window_shape": (2, 2), "strides": (2, 2), "padding": "SAME"}):
        np.testing.assert_array_equal(xla_cpu.max_pool(x, **kwargs), nn.max_pool(x, **kwargs))


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


def test_cnn_with_the_cpu_pool_equals_the_stock_cnn_bit_for_bit():
    images, labels = mnist_like_batch(37)
    stock = CNN()
    custom = CNN(max_pool=xla_cpu.max_pool)
    shapes = jax.eval_shape(stock.init, jax.random.PRNGKey(0), images[:1])["params"]
    custom_shapes = jax.eval_shape(custom.init, jax.random.PRNGKey(0), images[:1])["params"]
    assert custom_shapes == shapes
    params = torch_like_params(shapes)

    def loss_and_grads(model):
        def loss_fn(p):
            logits = model.apply({"params": p}, images)
            return flax_backend.cross_entropy(logits, labels), logits
        return xla_cpu.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

    (loss, logits), grads = loss_and_grads(custom)
    (ref_loss, ref_logits), ref_grads = loss_and_grads(stock)
    np.testing.assert_array_equal(logits, ref_logits)
    assert float(loss) == float(ref_loss)
    for (path, grad), ref in zip(jax.tree_util.tree_leaves_with_path(grads),
                                 jax.tree_util.tree_leaves(ref_grads), strict=True):
        np.testing.assert_array_equal(grad, ref, err_msg=jax.tree_util.keystr(path))


class FakeDevice:
    def __init__(self, platform):
        self.platform = platform


def test_create_model_picks_the_cpu_pool_by_platform():
    cpu_model = flax_backend.create_model(flax_backend.select_placement("cpu"))
    assert cpu_model.max_pool is xla_cpu.max_pool
    gpu_model = flax_backend.create_model(flax_backend.Placement(FakeDevice("gpu"), None))
    assert gpu_model.max_pool is None
    default_model = flax_backend.create_model(flax_backend.select_placement("auto"))
    assert default_model.max_pool is xla_cpu.max_pool  # CPU-only here


def xla_convolutions(compiled_text):
    """Convolutions XLA runs itself (Eigen), outside YNNPACK fusions."""
    return compiled_text.count(" convolution(") - convolutions_in_ynn(compiled_text)


def test_train_step_uses_the_cpu_pool_and_xla_backward_convolutions():
    placement = flax_backend.select_placement("cpu")
    state = flax_backend.create_train_state(Config(), placement)
    images, labels = mnist_like_batch(8)
    jaxpr = str(jax.make_jaxpr(flax_backend._step)(state, (images, labels)))
    assert "custom_vjp_call" in jaxpr
    assert "select_and_scatter" not in jaxpr and "reduce_window" not in jaxpr
    batch = (jax.ShapeDtypeStruct((256, 28, 28, 1), jnp.float32),
             jax.ShapeDtypeStruct((256,), jnp.int32))  # the tutorial's batch, compiled only
    engine = flax_backend._step_jit.lower(state, batch).compile().as_text()
    default = jax.jit(flax_backend._step).lower(state, batch).compile().as_text()
    # 8 convolutions: 3 forward, 2 input and 3 weight gradients. With the option XLA runs all
    # of them, and no YNNPACK fusion is left; without it, YNNPACK takes some (the slow ones).
    assert engine.count(" convolution(") == default.count(" convolution(") == 8
    assert xla_convolutions(engine) == 8 and not ynn_fusions(engine)
    assert xla_convolutions(default) < 8


def test_forward_graphs_keep_xla_defaults():
    # Forward only, XLA's defaults hand the CNN's convolutions (with the layers around them) to
    # YNNPACK, 1.2-1.8x faster than with xla_cpu's option (its docstring); evaluation and
    # logits are jitted plainly for that.
    params = flax_backend.create_train_state(Config(), flax_backend.select_placement("cpu")).params
    images = jax.ShapeDtypeStruct((1000, 28, 28, 1), jnp.float32)  # the evaluation batch
    labels = jax.ShapeDtypeStruct((1000,), jnp.int32)
    for compiled in (flax_backend._eval_step.lower(params, (images, labels)).compile(),
                     flax_backend._logits.lower(params, images).compile()):
        assert convolutions_in_ynn(compiled.as_text()) >= 2  # at least the two large layers


def test_evaluation_uses_the_stock_forward_and_it_equals_the_cpu_one():
    # eval_step / logits run the stock module; the CPU training model's forward (its pool
    # differs only in the gradient) gives the same logits, bit for bit.
    images, _ = mnist_like_batch(37)
    stock = CNN()
    shapes = jax.eval_shape(stock.init, jax.random.PRNGKey(0), images[:1])["params"]
    params = torch_like_params(shapes)
    assert flax_backend.INFERENCE_MODEL == stock
    cpu_model = flax_backend.create_model(flax_backend.select_placement("cpu"))
    expected = jax.jit(cpu_model.apply)({"params": params}, images)
    state = flax_backend.TrainState.create(apply_fn=stock.apply, params=params, tx=optax.sgd(0))
    actual = flax_backend.logits(state, (images,))
    np.testing.assert_array_equal(actual, expected)

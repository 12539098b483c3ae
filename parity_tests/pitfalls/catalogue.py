"""The catalogue: every porting mistake as a named `Side`, with the check meant to catch it and
the place in the project where the same thing is done right."""

import dataclasses
from pathlib import Path

import jax
import numpy as np
import optax

from flax_impl import convert
from mnist_common import loaders

from .side import PortedCNN, Side, softmax_then_cross_entropy, summed_cross_entropy

# torchvision's MNIST tutorial normalisation, (x - mean) / std, here on the Flax side only.
MNIST_MEAN, MNIST_STD = np.float32(0.1307), np.float32(0.3081)
CONV_NAMES = tuple(convert.module_name(k) for k in convert.CONV_KEYS)
DENSE_NAMES = tuple(convert.module_name(k) for k in convert.DENSE_KEYS)


@dataclasses.dataclass(frozen=True)
class Mistake:
    name: str
    area: str  # layout, network, init, optimizer, loss, data; "none" for the controls
    what: str  # the mistake in one line
    side: Side
    caught_by: str  # the cheapest check that must fail (checks.CHECKS); "" for the controls
    done_right: tuple  # (file, a line's text): where the project does it right


# Where the project does each thing right: a file and the text of the line (`where` finds it).
CONV_TRANSPOSE = ("flax_impl/convert.py", '.weight"].transpose(2, 3, 1, 0)')
DENSE_TRANSPOSE = ("flax_impl/convert.py", 'kernel = arrays[f"{key}.weight"].T')
FLATTEN = ("flax_impl/convert.py", "kernel = kernel[HWC_FROM_CHW]")
PADDING = ("flax_impl/model.py", 'padding="VALID"')
POOL = ("flax_impl/model.py", "pool(x, window_shape=(2, 2), strides=(2, 2))")
INIT = ("flax_impl/model.py", "torch_default_kernel_init = ")
ADAM = ("flax_impl/backend.py", "optax.adam(learning_rate=lr, b1=0.9, b2=0.999, eps=1e-8)")
LOSS = ("flax_impl/backend.py", "return losses.mean()")
PIXEL_TABLE = ("mnist_common/loaders.py", "PIXELS = np.arange(256")
EVERY_BATCH = ("mnist_common/loaders.py", "for i in range(start_step * batch_size, len(order)")
ORDER = ("mnist_common/loaders.py", "np.random.default_rng([seed, epoch]).permutation(")
ENGINE = ("flax_impl/backend.py", "def train_step(state, batch):")
REPO = Path(__file__).resolve().parents[2]


def where(done_right):
    """"file:line" of the first line of `file` holding the text (None if it holds none)."""
    path, text = done_right
    for number, line in enumerate((REPO / path).read_text().splitlines(), 1):
        if text in line:
            return f"{path}:{number}"
    return None


def _kernels(params, names, change):
    """Flax params with `change(kernel)` applied to the kernels of `names`."""
    return {name: {**layer, "kernel": change(layer["kernel"]) if name in names
                   else layer["kernel"]} for name, layer in params.items()}


def _with(convert_fn, names, change):
    return lambda arrays: _kernels(convert_fn(arrays), names, change)


# Conversions written wrong. Each acts on convert's correct result (HWIO kernels, (in, out)
# dense kernels): `to_params` undoes the right transpose and does the wrong thing instead.
def _oihw(kernel):  # HWIO -> OIHW: the torch array as it came
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def _reshaped(kernel):  # OIHW reshaped to HWIO's shape instead of transposed
    return np.ascontiguousarray(_oihw(kernel).reshape(kernel.shape))


def _unreshaped(kernel):
    h, w, i, o = kernel.shape
    return np.ascontiguousarray(kernel.reshape(o, i, h, w).transpose(2, 3, 1, 0))


def _hw_swapped(kernel):  # transpose(3, 2, 1, 0): (W, H, I, O), the shape of HWIO for 5x5
    return np.ascontiguousarray(kernel.transpose(1, 0, 2, 3))


def _unpermuted_fc(kernel):  # fc_layer.0's rows left in torch's (C, H, W) order
    rows = np.empty_like(kernel)
    rows[convert.HWC_FROM_CHW] = kernel
    return rows


def _permuted_fc(kernel):
    return kernel[convert.HWC_FROM_CHW]


def _layout(names, wrong, undo=None):
    """A Side whose conversion applies `wrong` to the kernels of `names` (and `undo` back)."""
    to_canonical = None
    if undo is not None:
        def to_canonical(params):
            return convert.params_to_canonical(_kernels(params, names, undo))
    return Side(to_params=_with(convert.canonical_to_params, names, wrong),
                to_canonical=to_canonical)


def _adam_without_bias_correction(lr):
    """Adam's moments used as they are, without dividing by 1 - beta^t."""
    def init(params):
        zeros = jax.tree_util.tree_map(jax.numpy.zeros_like, params)
        return optax.ScaleByAdamState(count=jax.numpy.zeros([], jax.numpy.int32), mu=zeros,
                                      nu=zeros)

    def update(grads, state, params=None):
        mu = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, state.mu, grads)
        nu = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, state.nu, grads)
        updates = jax.tree_util.tree_map(lambda m, v: m / (jax.numpy.sqrt(v) + 1e-8), mu, nu)
        return updates, optax.ScaleByAdamState(count=state.count + 1, mu=mu, nu=nu)

    return optax.chain(optax.GradientTransformation(init, update),
                       optax.scale_by_learning_rate(lr))


def _pixels_over_256(images):
    return np.rint(images * 255) / np.float32(256)


def _normalised(images):
    return (images - MNIST_MEAN) / MNIST_STD


def _last_partial_batch_dropped(num_examples, seed, epoch, batch_size):
    order = loaders.epoch_permutation(seed, epoch, num_examples)
    batches = loaders.index_batches(order, batch_size)
    return batches if len(batches[-1]) == batch_size else batches[:-1]


def _jax_shuffle(num_examples, seed, epoch, batch_size):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
    return loaders.index_batches(np.asarray(jax.random.permutation(key, num_examples)),
                                 batch_size)


SHIPPED = Mistake("shipped", "none", "the shipped code (the zero line)", Side(), "",
                  ENGINE)
MISTAKES = (
    Mistake("conv_kernel_not_transposed", "layout", "conv kernels loaded as OIHW, untransposed",
            _layout(CONV_NAMES, _oihw), "logits", CONV_TRANSPOSE),
    Mistake("conv_kernel_reshaped", "layout", "conv kernels reshaped to HWIO, not transposed",
            _layout(CONV_NAMES, _reshaped, _unreshaped), "logits", CONV_TRANSPOSE),
    Mistake("conv_kernel_hw_swapped", "layout", "conv kernels transposed (3, 2, 1, 0): H and W "
            "swapped, the shape of HWIO for square kernels",
            _layout(CONV_NAMES, _hw_swapped, _hw_swapped), "logits", CONV_TRANSPOSE),
    Mistake("linear_kernel_not_transposed", "layout", "dense kernels loaded as (out, in)",
            _layout(DENSE_NAMES, np.transpose), "logits", DENSE_TRANSPOSE),
    Mistake("flatten_order", "layout", "fc_layer.0's inputs left in torch's (C, H, W) flatten "
            "order; Flax flattens (H, W, C)", _layout(DENSE_NAMES[:1], _unpermuted_fc,
                                                      _permuted_fc),
            "logits", FLATTEN),
    Mistake("same_padding", "network", "convolutions with Flax's default padding 'SAME'",
            Side(model=PortedCNN(padding="SAME")), "logits", PADDING),
    Mistake("pool_stride_default", "network", "nn.max_pool without strides: Flax's default "
            "stride 1, where torch's MaxPool2d defaults to the window",
            Side(model=PortedCNN(pool_strides=None)), "logits", POOL),
    Mistake("pool_window_3", "network", "max-pool window 3 (stride 2, 'SAME'): the same shapes",
            Side(model=PortedCNN(pool_window=3, pool_padding="SAME")), "logits",
            POOL),
    Mistake("flax_default_init", "init", "Flax's default initialisers: LeCun normal kernels, "
            "zero biases", Side(model=PortedCNN(torch_init=False), own_init=True),
            "initial_draws", INIT),
    Mistake("adam_eps_root", "optimizer", "optax.adam(eps=0, eps_root=1e-8): eps inside the "
            "square root", Side(tx=lambda lr: optax.adam(lr, eps=0.0, eps_root=1e-8)),
            "adam_formula", ADAM),
    Mistake("adam_no_bias_correction", "optimizer", "Adam's moments without bias correction",
            Side(tx=_adam_without_bias_correction), "adam_formula", ADAM),
    Mistake("adamw", "optimizer", "optax.adamw (decoupled weight decay, its default 1e-4)",
            Side(tx=lambda lr: optax.adamw(lr)), "adam_formula", ADAM),
    Mistake("adam_l2_term", "optimizer", "an L2 term 1e-4 x w added to the gradient (torch's "
            "Adam weight_decay)", Side(tx=lambda lr: optax.chain(
                optax.add_decayed_weights(1e-4), optax.adam(lr))),
            "adam_formula", ADAM),
    Mistake("adam_beta2_0.99", "optimizer", "Adam with beta2 0.99",
            Side(tx=lambda lr: optax.adam(lr, b2=0.99)), "adam_formula",
            ADAM),
    Mistake("loss_summed", "loss", "the batch's cross-entropy summed, not averaged",
            Side(loss=summed_cross_entropy), "loss_and_gradients", LOSS),
    Mistake("softmax_before_loss", "loss", "a softmax applied before the cross-entropy",
            Side(loss=softmax_then_cross_entropy), "loss_and_gradients",
            LOSS),
    Mistake("pixels_over_256", "data", "pixels uint8 / 256 on the Flax side",
            Side(pixels=_pixels_over_256), "batches", PIXEL_TABLE),
    Mistake("normalised_one_side", "data", "Flax's images normalised (x - 0.1307) / 0.3081, "
            "torch's not", Side(pixels=_normalised), "batches", PIXEL_TABLE),
    Mistake("last_batch_dropped", "data", "the last partial batch (96 images) dropped",
            Side(index_batches=_last_partial_batch_dropped), "batches",
            EVERY_BATCH),
    Mistake("jax_shuffle", "data", "Flax's batches shuffled by jax.random.permutation",
            Side(index_batches=_jax_shuffle), "batches", ORDER),
)
# Not mistakes: what must pass every check.
CONTROLS = (
    Mistake("relu_after_pool", "none", "ReLU after the max-pool instead of before: "
            "max(relu(a), relu(b)) = relu(max(a, b)), the same function",
            Side(model=PortedCNN(relu_after_pool=True)), "", POOL),
    Mistake("shipped_own_init", "none", "the shipped code from Flax's own seed-0 draws",
            Side(own_init=True), "", INIT),
)
BY_NAME = {m.name: m for m in (SHIPPED, *MISTAKES, *CONTROLS)}

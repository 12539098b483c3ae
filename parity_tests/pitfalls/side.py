"""One side of a port: the shipped Flax engine with any of its pieces replaced.

A `Side` with no field set is the shipped Flax side: the engine's train state
(`parity_helpers.flax_state`: its module, its Optax Adam, `convert`'s layouts), the engine's
train step and the shared loaders. Each field replaces one piece: the module, the weight
conversion (both ways), the optimizer, the loss, the pixels Flax's pipeline gives, the order of
its batches, or its own initial draws.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import numpy as np
import optax
from flax import linen as nn
from parity_helpers import FLAX_CPU, eval_batches, flax_state, train_batches

from flax_impl import backend as flax_backend
from flax_impl import convert, xla_cpu
from flax_impl.model import torch_default_bias_init, torch_default_kernel_init
from mnist_common import loaders
from mnist_common.config import Config


class PortedCNN(nn.Module):
    """flax_impl/model.py's CNN written again with the knobs a port gets wrong; with the defaults
    it is the engine's CPU module (`xla_cpu.max_pool`) to the bit."""

    padding: str = "VALID"
    pool_window: int = 2
    pool_strides: tuple | None = (2, 2)  # None: Flax's default for nn.max_pool, (1, 1)
    pool_padding: str = "VALID"
    relu_after_pool: bool = False
    torch_init: bool = True

    def conv(self, features, in_features, name):
        if not self.torch_init:  # Flax's defaults: LeCun normal kernel, zero bias
            return nn.Conv(features, (5, 5), padding=self.padding, name=name)
        return nn.Conv(features, (5, 5), padding=self.padding, name=name,
                       kernel_init=torch_default_kernel_init,
                       bias_init=torch_default_bias_init(in_features * 25))

    def dense(self, features, in_features, name):
        if not self.torch_init:
            return nn.Dense(features, name=name)
        return nn.Dense(features, name=name, kernel_init=torch_default_kernel_init,
                        bias_init=torch_default_bias_init(in_features))

    def pool_relu(self, x):
        window = (self.pool_window, self.pool_window)
        if self.pool_strides is None:
            pool = functools.partial(nn.max_pool, window_shape=window, padding=self.pool_padding)
        else:
            pool = functools.partial(xla_cpu.max_pool, window_shape=window,
                                     strides=self.pool_strides, padding=self.pool_padding)
        return nn.relu(pool(x)) if self.relu_after_pool else pool(nn.relu(x))

    @nn.compact
    def __call__(self, x):
        x = nn.relu(self.conv(16, 1, "layer_0")(x))
        x = self.pool_relu(self.conv(32, 16, "layer_2")(x))
        x = self.pool_relu(self.conv(64, 32, "layer_5")(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(self.dense(100, x.shape[1], "fc_layer_0")(x))
        return self.dense(10, 100, "fc_layer_2")(x)


def summed_cross_entropy(logits, labels):
    """The batch's cross-entropy summed, not averaged."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()


def softmax_then_cross_entropy(logits, labels):
    """A softmax applied before a cross-entropy that applies its own."""
    return flax_backend.cross_entropy(jax.nn.softmax(logits), labels)


@functools.cache
def train_step_with_loss(loss):
    """The engine's train step (flax_impl/backend.py `_step`) with another loss function."""
    def step(state, batch):
        images, labels = batch

        def objective(params):
            return loss(state.apply_fn({"params": params}, images), labels)

        value, grads = jax.value_and_grad(objective)(state.params)
        return state.apply_gradients(grads=grads), {"loss": value}
    return xla_cpu.jit(step)


@functools.partial(jax.jit, static_argnums=0)
def _forward(apply_fn, params, images):
    return apply_fn({"params": params}, images)


@dataclasses.dataclass(frozen=True)
class Side:
    """The Flax side of a port; each field set replaces that piece of the shipped one."""

    model: nn.Module | None = None
    to_params: Callable | None = None  # canonical arrays -> Flax params
    to_canonical: Callable | None = None  # and back (the same mistake's inverse)
    tx: Callable | None = None  # lr -> an Optax transformation
    loss: Callable | None = None  # (logits, labels) -> the batch's loss
    pixels: Callable | None = None  # host images (B, 1, 28, 28) -> what Flax is fed
    index_batches: Callable | None = None  # (num_examples, seed, epoch, batch_size) -> lists
    own_init: bool = False  # trained from its own draws, not torch's weights

    def state(self, weights, lr=2e-4):
        """A train state holding `weights`: the engine's, with this side's pieces in place."""
        state = flax_state(weights, lr)
        changes = {}
        if self.model is not None:
            changes["apply_fn"] = self.model.apply
        if self.to_params is not None:
            changes["params"] = jax.device_put(self.to_params(weights), FLAX_CPU.device)
        if self.tx is not None or "params" in changes:
            tx = self.optimizer(lr)
            changes.update(tx=tx, opt_state=tx.init(changes.get("params", state.params)))
        return state.replace(**changes)

    def optimizer(self, lr=2e-4):
        """This side's Optax transformation (the engine's Adam unless replaced)."""
        if self.tx is not None:
            return self.tx(lr)
        return flax_backend.create_train_state(Config(lr=lr), FLAX_CPU).tx

    def arrays(self, state):
        """(canonical weights, Adam's moments and step) as `state_to_arrays` gives them."""
        adam = _adam_state(state.opt_state)
        moments = {}
        for name, tree in (("exp_avg", adam.mu), ("exp_avg_sq", adam.nu)):
            moments.update({f"{name}.{k}": v for k, v in self.canonical(tree).items()})
        moments["step"] = np.asarray([float(adam.count)], np.float32)
        return self.canonical(state.params), moments

    def logits(self, state, images_nchw):
        """The logits of NCHW host images, as the state's module computes them."""
        x, _ = flax_backend.place_batch(FLAX_CPU, images_nchw, np.zeros(len(images_nchw)))
        return np.asarray(_forward(state.apply_fn, state.params, x))

    def train_step(self, state, host_batch):
        """One train step on a host batch through the engine's step (or its loss replaced)."""
        batch = flax_backend.place_batch(FLAX_CPU, *host_batch)
        if self.loss is None:
            return flax_backend.train_step(state, batch)
        return train_step_with_loss(self.loss)(state, batch)

    def canonical(self, params):
        """Flax params -> canonical arrays, through this side's conversion."""
        to_canonical = self.to_canonical or convert.params_to_canonical
        return to_canonical(jax.device_get(params))

    def objective(self):
        """The loss this side trains on."""
        return self.loss or flax_backend.cross_entropy

    def train_batches(self, split, *, seed, epoch, batch_size):
        """This side's host batches of one epoch (the shipped loaders unless replaced)."""
        if self.index_batches is None and self.pixels is None:
            return train_batches(split, seed=seed, epoch=epoch, batch_size=batch_size)
        order = self.index_batches or (lambda n, s, e, b: loaders.train_index_batches(
            n, seed=s, epoch=e, batch_size=b))
        host = loaders.batches_of(split, order(len(split[1]), seed, epoch, batch_size),
                                  train=True)
        return ((self.fed(x), y) for x, y in host)

    def eval_batches(self, split):
        """Every test image once, in file order, as this side's pipeline gives them."""
        return ((self.fed(x), y) for x, y in eval_batches(split))

    def fed(self, images):
        """Host images as this side's pipeline hands them to the model."""
        return images if self.pixels is None else self.pixels(images)

    def initial_weights(self, seed):
        """Canonical weights this side draws itself for `seed` (as `create_train_state` does)."""
        if self.model is None:
            state = flax_backend.create_train_state(Config(seed=seed), FLAX_CPU)
            return flax_backend.state_to_arrays(state)[0]
        _, init_rng = jax.random.split(jax.random.PRNGKey(seed))
        params = _init(self.model, init_rng)
        return self.canonical(params)


def _adam_state(opt_state):
    """The ScaleByAdamState inside an Optax chain's (nested) state."""
    if isinstance(opt_state, optax.ScaleByAdamState):
        return opt_state
    if isinstance(opt_state, tuple):
        for part in opt_state:
            found = _adam_state(part)
            if found is not None:
                return found
    return None


@functools.partial(jax.jit, static_argnums=0)
def _init(model, rng):
    return model.init(rng, np.ones((1, 28, 28, 1), np.float32))["params"]

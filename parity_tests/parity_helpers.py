"""Helpers the parity tests share: seeded batches and both train states from one set of weights.

Everything runs through the engines the CLIs run, `torch_impl.backend` and `flax_impl.backend`.
"""

import jax
import numpy as np
import torch

from flax_impl import backend as flax_backend
from flax_impl import convert
from mnist_common import loaders
from mnist_common.config import Config
from mnist_common.weights import CANONICAL_SHAPES
from torch_impl import backend as torch_backend

# Gradient scales per step: large, tiny (Adam's eps matters at ~1e-8), mixed, sign changes.
GRADIENT_SCALES = (1.0, 1e-3, 10.0, 1e-8, 0.1, 3e-7)
TORCH_CPU = torch_backend.select_placement("cpu")
FLAX_CPU = flax_backend.select_placement("cpu")


def random_batch(seed, batch_size=32):
    """MNIST-shaped images in [0, 1] (NCHW torch tensors) and labels, from a seed."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch_size, 1, 28, 28)).astype(np.float32) / 255
    labels = rng.integers(0, 10, size=batch_size)
    return torch.from_numpy(images), torch.from_numpy(labels)


def to_numpy_batch(images, labels):
    """A batch (NCHW, NumPy or torch tensors on the CPU) as Flax's modules take it: (NHWC
    float32, int32) NumPy arrays."""
    x = np.asarray(images).transpose(0, 2, 3, 1)  # (B, 28, 28, 1)
    return np.ascontiguousarray(x), np.asarray(labels).astype(np.int32)


def torch_state(weights, lr=2e-4):
    """A torch train state on the CPU holding `weights` and a fresh Adam."""
    state = torch_backend.create_train_state(Config(lr=lr), TORCH_CPU)
    return torch_backend.state_from_arrays(state, weights, {})


def flax_state(weights, lr=2e-4):
    """A Flax train state on the CPU holding `weights` and a fresh Adam."""
    state = flax_backend.create_train_state(Config(lr=lr), FLAX_CPU)
    return flax_backend.state_from_arrays(state, weights, {})


def torch_step(state, batch):
    """One torch train step on a host batch; (state, loss as a float)."""
    state, metrics = torch_backend.train_step(state, torch_backend.place_batch(TORCH_CPU, *batch))
    return state, float(metrics["loss"])


def flax_step(state, batch):
    """One Flax train step on a host batch; (state, loss as a float)."""
    state, metrics = flax_backend.train_step(state, flax_backend.place_batch(FLAX_CPU, *batch))
    return state, float(metrics["loss"])


def torch_loss_and_grads(weights, batch):
    """torch's mean cross-entropy and canonical gradients of `weights` on a loader batch."""
    state = torch_state(weights)
    images, labels = map(torch.as_tensor, batch)
    loss = torch.nn.functional.cross_entropy(state.model(images), labels)
    loss.backward()
    named = dict(state.model.named_parameters())
    return loss.item(), {k: named[k].grad.numpy().copy() for k in CANONICAL_SHAPES}


def flax_loss_and_grads(weights, batch):
    """Flax's mean cross-entropy (the engine's) and canonical gradients, same inputs."""
    state = flax_state(weights)
    x, y = to_numpy_batch(*batch)

    def loss_fn(params):
        return flax_backend.cross_entropy(state.apply_fn({"params": params}, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return float(loss), convert.params_to_canonical(jax.device_get(grads))


def torch_apply(state, grads):
    """torch's optimizer fed canonical gradients: one step."""
    named = dict(state.model.named_parameters())
    for key in CANONICAL_SHAPES:
        named[key].grad = torch.from_numpy(grads[key].copy())
    state.optimizer.step()
    return state


@jax.jit
def flax_apply(state, grads):
    """Flax's optimizer fed gradients in Flax's layout: one step."""
    return state.apply_gradients(grads=grads)


def seeded_gradients(step, shapes=CANONICAL_SHAPES):
    """Canonical-layout gradients for one step: varied magnitudes, some exact zeros."""
    rng = np.random.default_rng([11, step])
    scale = GRADIENT_SCALES[step % len(GRADIENT_SCALES)]
    grads = {}
    for key, shape in shapes.items():
        grad = rng.standard_normal(shape) * scale * 10.0 ** rng.uniform(-2, 1, shape)
        grad[rng.random(shape) < 0.05] = 0.0  # dead units: no gradient at all
        grads[key] = grad.astype(np.float32)
    return grads


def predictions(framework, weights, test_split):
    """The class each test image gets from `weights` in `framework` (file order)."""
    if framework == "torch":
        model = torch_state(weights).model.eval()
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(x)).argmax(1).numpy()
                                   for x, _ in eval_batches(test_split)])
    state = flax_state(weights)
    return np.concatenate([flax_backend.logits(state, to_numpy_batch(x, y)).argmax(1)
                           for x, y in eval_batches(test_split)])


def train_batches(split, *, seed, epoch, batch_size, loader="memory", root=None, start_step=0):
    """Host batches (images (B, 1, 28, 28) float32, labels (B,) int64) of one epoch, in the
    training loop's order."""
    index_lists = loaders.train_index_batches(len(split[1]), seed=seed, epoch=epoch,
                                              batch_size=batch_size, start_step=start_step)
    return loaders.batches_of(split, index_lists, train=True, loader=loader, root=root)


def eval_batches(split, *, loader="memory", root=None, batch_size=loaders.EVAL_BATCH_SIZE):
    """Every test image once, in file order, in the format of `train_batches`."""
    index_lists = loaders.eval_index_batches(len(split[1]), batch_size)
    return loaders.batches_of(split, index_lists, train=False, loader=loader, root=root)

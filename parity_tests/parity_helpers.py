"""Helpers the parity tests share: seeded batches and both train states from one set of weights."""

import jax
import numpy as np
import torch

from flax_impl import train as flax_train
from mnist_common.config import Config
from torch_impl import train as torch_train

CPU = torch.device("cpu")


def random_batch(seed, batch_size=32):
    """MNIST-shaped images in [0, 1] (NCHW torch tensors) and labels, from a seed."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch_size, 1, 28, 28)).astype(np.float32) / 255
    labels = rng.integers(0, 10, size=batch_size)
    return torch.from_numpy(images), torch.from_numpy(labels)


def torch_state(weights, lr=2e-4):
    """A torch TrainState on the CPU holding `weights` and a fresh Adam."""
    state = torch_train.create_train_state(Config(lr=lr), CPU)
    return torch_train.state_from_arrays(state, weights, {})


def flax_state(weights, lr=2e-4):
    """A Flax TrainState on the CPU holding `weights` and a fresh Adam."""
    device = jax.devices("cpu")[0]
    state = flax_train.create_train_state(jax.random.PRNGKey(0), Config(lr=lr), device)
    return flax_train.state_from_arrays(state, weights, {})

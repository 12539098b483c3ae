"""Helpers the parity tests share: seeded batches and both train states from one set of weights.

Everything runs through the engines the CLIs run, `torch_impl.backend` and `flax_impl.backend`.
"""

import numpy as np
import torch

from flax_impl import backend as flax_backend
from mnist_common.config import Config
from torch_impl import backend as torch_backend

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

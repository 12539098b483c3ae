"""Batches for both frameworks: one seeded order, two loader paths, one NumPy boundary.

The order of training images in epoch `e` is `epoch_permutation(seed, e, n)`; both the faithful
`torch.utils.data.DataLoader` path and the fast in-memory path cut batches from it, so for one
seed every framework and every loader sees the same batches in the same order.
"""

import math

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

EVAL_BATCH_SIZE = 1000  # evaluation order is the file order; the batch size only bounds memory


def epoch_permutation(seed, epoch, num_examples):
    """The training order for one epoch: a pure function of (seed, epoch), so resume is exact."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples, batch_size):
    """Steps in one epoch; the last batch may be partial (every image is used)."""
    return math.ceil(num_examples / batch_size)


def index_batches(order, batch_size, start_step=0):
    """Split an index order into batches, skipping the first `start_step` of them."""
    return [order[i:i + batch_size] for i in range(start_step * batch_size, len(order), batch_size)]


def _memory_batches(images_u8, labels, index_lists):
    images = torch.from_numpy(images_u8)
    targets = torch.from_numpy(labels)
    for indices in index_lists:
        indices = torch.from_numpy(indices)
        # ToTensor's arithmetic exactly: uint8 -> float32, then / 255.
        x = images[indices].unsqueeze(1).to(torch.float32).div(255)  # (B, 1, 28, 28)
        yield x, targets[indices]


def _dataloader_batches(root, train, index_lists):
    dataset = torchvision.datasets.MNIST(
        root, train=train, transform=torchvision.transforms.ToTensor(), download=False)
    # num_workers=0: worker processes would fork a process that may hold JAX's threads.
    loader = DataLoader(dataset, batch_sampler=[list(map(int, b)) for b in index_lists],
                        num_workers=0)
    yield from loader


def train_index_batches(num_examples, *, seed, epoch, batch_size, start_step=0):
    """The index batches of one training epoch, from `start_step` on."""
    return index_batches(epoch_permutation(seed, epoch, num_examples), batch_size, start_step)


def eval_index_batches(num_examples, batch_size=EVAL_BATCH_SIZE):
    """Every example once, in file order."""
    return index_batches(np.arange(num_examples), batch_size)


def batches_of(split, index_lists, *, train, loader="memory", root=None):
    """Yield (images, labels) torch tensors of `index_lists` from the chosen loader."""
    if loader == "dataloader":
        return _dataloader_batches(root, train, index_lists)
    return _memory_batches(*split, index_lists)


def train_batches(split, *, seed, epoch, batch_size, loader="memory", root=None, start_step=0):
    """Yield (images (B,1,28,28) float32, labels (B,) int64) torch tensors for one epoch."""
    index_lists = train_index_batches(len(split[1]), seed=seed, epoch=epoch,
                                      batch_size=batch_size, start_step=start_step)
    return batches_of(split, index_lists, train=True, loader=loader, root=root)


def eval_batches(split, *, loader="memory", root=None, batch_size=EVAL_BATCH_SIZE):
    """Yield every test image once, in file order, in the same format as `train_batches`."""
    index_lists = eval_index_batches(len(split[1]), batch_size)
    return batches_of(split, index_lists, train=False, loader=loader, root=root)


def to_numpy_batch(images, labels):
    """The one boundary into JAX: NCHW torch tensors -> (NHWC float32, int32) NumPy arrays."""
    x = images.numpy().transpose(0, 2, 3, 1)  # (B, 28, 28, 1)
    return np.ascontiguousarray(x), labels.numpy().astype(np.int32)

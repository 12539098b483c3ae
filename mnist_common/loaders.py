"""Batches for both frameworks: one seeded order, one pixel table, one way onto the device.

The order of training images in epoch `e` is `epoch_permutation(seed, e, n)`; both the faithful
`torch.utils.data.DataLoader` path and the fast in-memory path cut batches from it, so for one
seed every framework and every loader sees the same batches in the same order. Host batches are
NumPy, (images (B, 1, 28, 28) float32, labels (B,) int64), and each engine converts them once
(`place_batch`). `EngineBatches` decides, once for the loop and the evaluation CLI, whether an
engine cuts its batches on the device from a split held there or places host batches.
"""

import math

import numpy as np
import torchvision
from torch.utils.data import DataLoader

EVAL_BATCH_SIZE = 1000  # evaluation order is the file order; the batch size only bounds memory

# ToTensor's pixel values, uint8 / 255 correctly rounded to float32 (IEEE division), for every
# path: the host loader below, torch's and Flax's device gathers (`gather_batch`). A table, not
# "/ 255" on each side: a compiler may turn that into a multiply by 1/255, which is one ulp off
# for 13 % of MNIST's pixels.
PIXELS = np.arange(256, dtype=np.float32) / np.float32(255)


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
    for indices in index_lists:
        yield PIXELS[images_u8[indices]][:, None], labels[indices]  # (B, 1, 28, 28), (B,)


def _dataloader_batches(root, train, index_lists):
    dataset = torchvision.datasets.MNIST(
        root, train=train, transform=torchvision.transforms.ToTensor(), download=False)
    # num_workers=0: worker processes would fork a process that may hold JAX's threads.
    loader = DataLoader(dataset, batch_sampler=[list(map(int, b)) for b in index_lists],
                        num_workers=0)
    for images, labels in loader:
        yield images.numpy(), labels.numpy()  # views, no copy


def train_index_batches(num_examples, *, seed, epoch, batch_size, start_step=0):
    """The index batches of one training epoch, from `start_step` on."""
    return index_batches(epoch_permutation(seed, epoch, num_examples), batch_size, start_step)


def eval_index_batches(num_examples, batch_size=EVAL_BATCH_SIZE):
    """Every example once, in file order."""
    return index_batches(np.arange(num_examples), batch_size)


def batches_of(split, index_lists, *, train, loader="memory", root=None):
    """Yield host batches (NumPy) of `index_lists` from the chosen loader."""
    if loader == "dataloader":
        return _dataloader_batches(root, train, index_lists)
    return _memory_batches(*split, index_lists)


def pad_batch(images, labels, parts):
    """A host batch for `parts` equal shares (processes or devices), the data-parallel policy of
    both engines: unchanged when it divides, else padded with zero images and returned with a
    0/1 mask of the real ones, which keeps the padding out of the loss and the counts."""
    pad = -len(labels) % parts
    if not pad:
        return images, labels
    mask = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return images, labels, mask


_NOT_YET = object()  # a split the memory loader has not placed yet


class EngineBatches:
    """One split's batches as an engine takes them: cut on the device from the split held there
    (`place_split`, the memory loader on one device: placed once, at the first use), else read
    by the host loader and placed batch by batch (`place_batch`: `--loader dataloader`, groups)."""

    def __init__(self, backend, placement, split, *, train, loader="memory", root=None):
        self.backend, self.placement, self.split = backend, placement, split
        self.train, self.loader, self.root = train, loader, root
        self.placed = _NOT_YET if loader == "memory" else None  # None: host batches

    def __len__(self):
        return len(self.split[1])

    def __call__(self, index_lists):
        """The engine's batches of `index_lists` (an iterator)."""
        if self.placed is _NOT_YET:
            self.placed = self.backend.place_split(self.placement, *self.split)
        if self.placed is not None:
            return (self.backend.gather_batch(self.placed, i) for i in index_lists)
        host = batches_of(self.split, index_lists, train=self.train, loader=self.loader,
                          root=self.root)
        return (self.backend.place_batch(self.placement, x, y) for x, y in host)

    def every_example(self):
        """Every example once, in file order: what evaluation reads."""
        return self(eval_index_batches(len(self)))

"""MNIST for the referee: the IDX files parsed here, and the batch order from its definition.

The order is the one the README states: epoch `e` of seed `s` visits the training images in the
order `numpy.random.default_rng([s, e]).permutation(60000)`, cut into batches of `batch_size`,
the last one partial. Pixels are `k / 255` in float64 (ToTensor's value, before float32).
"""

import struct
from pathlib import Path

import numpy as np

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path, magic):
    """An IDX file's array: big-endian magic, one big-endian uint32 per dimension, uint8 data."""
    raw = Path(path).read_bytes()
    found, = struct.unpack(">I", raw[:4])
    if found != magic:
        raise ValueError(f"{path}: magic {found:#x}, expected {magic:#x}")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} bytes of data for dimensions {dims}")
    return data.reshape(dims)


def load_split(root, train):
    """(images uint8 (N, 28, 28), labels uint8 (N,)) read from `<root>/MNIST/raw/`."""
    raw = Path(root) / "MNIST" / "raw"
    images_name, labels_name = FILES[train]
    images = read_idx(raw / images_name, IMAGES_MAGIC)
    labels = read_idx(raw / labels_name, LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"{raw}: {len(images)} images but {len(labels)} labels")
    return images, labels


def pixels(images_u8):
    """uint8 (N, 28, 28) -> float64 (N, 1, 28, 28) in [0, 1]: k / 255, no normalisation."""
    return images_u8[:, None].astype(np.float64) / 255.0


def batch_indices(num_examples, seed, epoch, batch_size):
    """The index batches of one epoch: every image once, the last batch partial."""
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return [order[start:start + batch_size] for start in range(0, num_examples, batch_size)]

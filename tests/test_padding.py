"""Data-parallel padding on one device: `loaders.pad_batch`, and each engine's masked paths
(train step, evaluation) against the same batch without its padding.

A group pads a batch to equal shares with extra examples and a 0/1 mask; masked examples must
change nothing. Here the padding is not zeros (as `pad_batch` writes) but random images with
random labels, so an example the mask drops would show in any loss, gradient or count.
"""

import jax
import numpy as np
import pytest
import torch

from flax_impl import backend as flax_backend
from mnist_common.config import Config
from mnist_common.loaders import pad_batch
from torch_impl import backend as torch_backend

REAL, PAD = 30, 4  # a batch of 30 images padded by 4 masked ones
BACKENDS = {"torch": torch_backend, "flax": flax_backend}


def host_batch(count, seed):
    """`count` MNIST-shaped images in [0, 1] (NCHW float32) and int64 labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 1, 28, 28)).astype(np.float32) / np.float32(255)
    return images, rng.integers(0, 10, count).astype(np.int64)


def padded(images, labels):
    """The batch followed by PAD random examples, and the mask that drops them."""
    pad_images, pad_labels = host_batch(PAD, seed=99)
    mask = np.concatenate([np.ones(len(labels)), np.zeros(PAD)]).astype(np.float32)
    return np.concatenate([images, pad_images]), np.concatenate([labels, pad_labels]), mask


def on_device(backend, placement, images, labels, mask=None):
    """A host batch (and mask) placed as the engine takes it on one device."""
    batch = backend.place_batch(placement, images, labels)
    if mask is None:
        return batch
    if backend is torch_backend:
        return (*batch, torch.from_numpy(mask))
    return (*batch, jax.device_put(mask, placement.device))


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_pad_batch_keeps_every_row_and_pads_with_masked_zeros(parts):
    images, labels = host_batch(20, seed=1)
    out = pad_batch(images, labels, parts)
    pad = -20 % parts
    if not pad:  # a batch that divides is handed on as it is, without a mask
        assert len(out) == 2 and out[0] is images and out[1] is labels
        return
    out_images, out_labels, mask = out
    assert out_images.shape == (20 + pad, 1, 28, 28) and out_images.dtype == np.float32
    assert out_labels.shape == (20 + pad,) and out_labels.dtype == np.int64
    assert len(out_labels) % parts == 0
    assert np.array_equal(out_images[:20], images) and np.array_equal(out_labels[:20], labels)
    assert not out_images[20:].any() and not out_labels[20:].any()
    assert mask.dtype == np.float32 and mask.tolist() == [1.0] * 20 + [0.0] * pad


@pytest.mark.parametrize("framework", BACKENDS)
def test_masked_cross_entropy_ignores_the_padding(framework):
    backend = BACKENDS[framework]
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(REAL + PAD, 10)).astype(np.float32)
    logits[REAL:] *= 50  # padding with huge losses: any share of it shows
    labels = rng.integers(0, 10, REAL + PAD)
    mask = (np.arange(REAL + PAD) < REAL).astype(np.float32)
    expected = np.mean([np.log(np.exp(row.astype(np.float64)).sum()) - row[label]
                        for row, label in zip(logits[:REAL], labels[:REAL], strict=True)])
    if framework == "torch":
        loss = backend.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                     torch.from_numpy(mask))
    else:
        loss = backend.cross_entropy(logits, labels.astype(np.int32), mask)
    assert abs(float(loss) - expected) <= 1e-6


@pytest.mark.parametrize("framework", BACKENDS)
def test_masked_train_step_is_the_unpadded_step(framework):
    backend = BACKENDS[framework]
    placement = backend.select_placement("cpu")
    images, labels = host_batch(REAL, seed=3)
    start = backend.create_train_state(Config(), placement)
    before = backend.state_to_arrays(start)[0]
    plain_state, plain = backend.train_step(start, on_device(backend, placement, images, labels))
    plain_weights = backend.state_to_arrays(plain_state)[0]
    state = backend.create_train_state(Config(), placement)  # the same seeded weights again
    masked_state, masked = backend.train_step(
        state, on_device(backend, placement, *padded(images, labels)))
    masked_weights = backend.state_to_arrays(masked_state)[0]
    assert abs(float(masked["loss"]) - float(plain["loss"])) <= 1e-6
    for key, expected in plain_weights.items():
        # One Adam step moves each weight by about lr (2e-4); the masked sums may move it only
        # by float32 rounding of the update.
        assert np.abs(masked_weights[key] - expected).max() <= 1e-6, key
        assert np.abs(expected - before[key]).max() > 1e-5, key  # the step moved it


@pytest.mark.parametrize("framework", BACKENDS)
def test_masked_evaluation_counts_only_the_real_examples(framework):
    backend = BACKENDS[framework]
    placement = backend.select_placement("cpu")
    state = backend.create_train_state(Config(), placement)
    first, second = host_batch(REAL, seed=4), host_batch(REAL - 7, seed=5)
    plain = backend.evaluate(state, [on_device(backend, placement, *b) for b in (first, second)])
    masked = backend.evaluate(state, [on_device(backend, placement, *padded(*b))
                                      for b in (first, second)])
    assert plain["examples"] == masked["examples"] == 2 * REAL - 7
    assert masked["correct"] == plain["correct"]
    assert masked["accuracy"] == plain["accuracy"]
    assert abs(masked["loss"] - plain["loss"]) <= 1e-6 * plain["loss"]

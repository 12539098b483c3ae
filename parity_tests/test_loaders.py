"""Same data: both loader paths give identical batches, and both frameworks see the same pixels."""

import itertools

import numpy as np
import pytest
import torch
from margins import check
from parity_helpers import FLAX_CPU, TORCH_CPU, train_batches

from flax_impl import backend as flax_backend
from mnist_common import data, loaders
from torch_impl import backend as torch_backend


@pytest.fixture(scope="module")
def train_split(mnist_root):
    return data.load_arrays(mnist_root, train=True)


def first_batches(train_split, mnist_root, loader, count=3, seed=0, epoch=0, start_step=0):
    batches = train_batches(train_split, seed=seed, epoch=epoch, batch_size=256,
                                    loader=loader, root=mnist_root, start_step=start_step)
    return list(itertools.islice(batches, count))


def test_memory_and_dataloader_paths_give_identical_batches(train_split, mnist_root):
    memory = first_batches(train_split, mnist_root, "memory")
    faithful = first_batches(train_split, mnist_root, "dataloader")
    check("loaders: memory vs DataLoader path, of 3 batches differing",
          sum(not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
              for a, b in zip(memory, faithful, strict=True)), 0, group="data")
    for (x_mem, y_mem), (x_dl, y_dl) in zip(memory, faithful, strict=True):
        assert isinstance(x_mem, np.ndarray) and isinstance(x_dl, np.ndarray)  # host: NumPy
        assert x_mem.dtype == x_dl.dtype == np.float32
        assert y_mem.dtype == y_dl.dtype == np.int64
        assert x_mem.shape == x_dl.shape == (256, 1, 28, 28)
        np.testing.assert_array_equal(x_mem, x_dl)
        np.testing.assert_array_equal(y_mem, y_dl)


def test_last_partial_batch_is_kept_and_identical(train_split, mnist_root):
    # 60,000 = 234 * 256 + 96: the tutorial dropped these 96 images; we train on them.
    memory = first_batches(train_split, mnist_root, "memory", start_step=234)
    faithful = first_batches(train_split, mnist_root, "dataloader", start_step=234)
    assert len(memory) == len(faithful) == 1
    assert memory[0][0].shape[0] == 96
    np.testing.assert_array_equal(memory[0][0], faithful[0][0])


def test_order_depends_on_seed_and_epoch(train_split, mnist_root):
    (_, labels_a), = first_batches(train_split, mnist_root, "memory", count=1, seed=0, epoch=0)
    (_, labels_b), = first_batches(train_split, mnist_root, "memory", count=1, seed=0, epoch=1)
    (_, labels_c), = first_batches(train_split, mnist_root, "memory", count=1, seed=1, epoch=0)
    (_, labels_d), = first_batches(train_split, mnist_root, "memory", count=1, seed=0, epoch=0)
    assert not np.array_equal(labels_a, labels_b) and not np.array_equal(labels_a, labels_c)
    np.testing.assert_array_equal(labels_a, labels_d)


def test_flax_sees_exactly_the_pixels_torch_sees(train_split, mnist_root):
    (images, labels), = first_batches(train_split, mnist_root, "dataloader", count=1)
    x, y = flax_backend.place_batch(FLAX_CPU, images, labels)
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == (256, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(x, images.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y, labels)
    torch_x, torch_y = torch_backend.place_batch(TORCH_CPU, images, labels)
    np.testing.assert_array_equal(torch_x.numpy(), images)
    np.testing.assert_array_equal(torch_y.numpy(), labels)
    # ToTensor: uint8 / 255 exactly, no normalisation.
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(np.round(x * 255)).astype(int)) <= set(range(256))


@pytest.mark.parametrize("backend", [torch_backend, flax_backend], ids=["torch", "flax"])
def test_batches_cut_on_the_device_are_totensors_pixels(train_split, backend):
    # The loop's memory path cuts batches from a split held on the device (`gather_batch`); the
    # pixels must be ToTensor's uint8 / 255 to the bit, as on the host path. (A compiler that
    # turns / 255 into * (1 / 255) is off by one ulp on ~13 % of the pixels.)
    if not hasattr(backend, "gather_batch"):
        pytest.skip(f"{backend.FRAMEWORK} has no device-side batches")
    images, labels = train_split[0][:300], train_split[1][:300]
    placement = TORCH_CPU if backend is torch_backend else FLAX_CPU
    indices = np.random.default_rng(0).permutation(300)[:64]
    batch = backend.gather_batch(backend.place_split(placement, images, labels), indices)
    x = np.asarray(batch[0].cpu() if backend is torch_backend else batch[0])
    if backend is flax_backend:
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    expected = torch.from_numpy(images[indices]).unsqueeze(1).to(torch.float32).div(255).numpy()
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(x, loaders.PIXELS[images[indices]][:, None])
    np.testing.assert_array_equal(np.asarray(batch[1]), labels[indices])


def test_the_pixel_table_is_uint8_over_255_correctly_rounded():
    # One table for every path (host, torch's and Flax's device gathers): each entry is the
    # float32 nearest to k / 255, as ToTensor computes it.
    exact = np.arange(256, dtype=np.float64) / 255
    table = loaders.PIXELS
    assert table.dtype == np.float32 and table.shape == (256,)
    below, above = np.nextafter(table, np.float32(-1)), np.nextafter(table, np.float32(2))
    assert (np.abs(table - exact) <= np.abs(below - exact)).all()
    assert (np.abs(table - exact) <= np.abs(above - exact)).all()
    totensor = torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255).numpy()
    np.testing.assert_array_equal(table, totensor)

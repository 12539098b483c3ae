"""The shared pipeline against the referee's own reading of MNIST and its own batch order.

The referee parses the IDX files itself (`referee/mnist.py`) and cuts the order the README
states. The pipeline's float32 pixels must be k / 255 correctly rounded: within u * x (u = 2^-24)
of the exact value; its labels and the number and sizes of its batches exactly the referee's.
"""

import itertools

import numpy as np
import pytest
from margins import check
from parity_helpers import eval_batches, train_batches
from referee import mnist as referee_mnist
from referee.bounds import U

from mnist_common import data, loaders

BATCH_SIZE = 256
FIRST_LABELS = {True: [5, 0, 4, 1, 9, 2, 1, 3, 1, 4], False: [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]}
# (seed, epoch, batch index): the first two batches, the last (partial) one, other epochs/seeds.
PROBES = ((0, 0, 0), (0, 0, 1), (0, 0, 234), (0, 1, 0), (1, 0, 0))


@pytest.fixture(scope="module")
def splits(mnist_root):
    return {train: (referee_mnist.load_split(mnist_root, train),
                    data.load_arrays(mnist_root, train=train)) for train in (True, False)}


def pixel_ratio(shared_images, referee_images_u8):
    """Largest |pipeline pixel - k / 255| / (u * k / 255); 0 where both are exactly 0."""
    exact = referee_mnist.pixels(referee_images_u8)
    error = np.abs(np.asarray(shared_images, dtype=np.float64) - exact)
    if (error[exact == 0] > 0).any():
        return np.inf
    return float((error[exact > 0] / (U * exact[exact > 0])).max())


def test_both_readings_of_the_files_agree(splits):
    for train, ((images, labels), (shared_images, shared_labels)) in splits.items():
        assert images.shape == (60_000 if train else 10_000, 28, 28)
        assert list(labels[:10]) == FIRST_LABELS[train]
        mismatches = int((images != shared_images).sum() + (labels != shared_labels).sum())
        check(f"data: {'train' if train else 'test'} split, values differing from the "
              f"referee's IDX reading", mismatches, 0, group="data")
        assert mismatches == 0


def test_training_batches_are_the_referees(splits):
    (images, labels), shared = splits[True]
    worst, mismatches = 0.0, 0
    for seed, epoch, index in PROBES:
        ours = referee_mnist.batch_indices(len(labels), seed, epoch, BATCH_SIZE)
        assert len(ours) == 235 and len(ours[-1]) == 96  # every image, the last batch partial
        batches = train_batches(shared, seed=seed, epoch=epoch, batch_size=BATCH_SIZE,
                                        start_step=index)
        probed = list(itertools.islice(batches, 1))
        assert probed, f"no batch {index} in epoch {epoch} (the referee's has {len(ours)})"
        x, y = probed[0]
        assert len(y) == len(ours[index]), (seed, epoch, index)
        mismatches += int((np.asarray(y) != labels[ours[index]]).sum())
        worst = max(worst, pixel_ratio(x, images[ours[index]]))
    steps = loaders.steps_per_epoch(len(labels), BATCH_SIZE)
    check("data: batches per epoch, pipeline vs referee (235)", abs(steps - 235), 0,
          group="data")
    check("data: labels of 5 probed batches differing from the referee's", mismatches, 0,
          group="data")
    check("data: pixels, |pipeline - k/255| / (u k/255)", worst, 1.0, group="data")
    assert steps == 235 and mismatches == 0 and worst <= 1


def test_evaluation_batches_are_every_test_image_in_file_order(splits):
    (images, labels), shared = splits[False]
    seen = list(eval_batches(shared))
    x = np.concatenate([np.asarray(b[0]) for b in seen])
    y = np.concatenate([np.asarray(b[1]) for b in seen])
    check("data: test images the evaluation batches miss or reorder", int(
       (y != labels).sum()) + abs(len(y) - 10_000), 0, group="data")
    assert len(y) == 10_000 and (y == labels).all()
    assert pixel_ratio(x, images) <= 1

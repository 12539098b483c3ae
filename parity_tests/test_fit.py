"""Same run: both engines through the shared `fit`, on identical batches, to the same losses.

`fit` is what the training CLIs run. Each engine's batch placement (`place_batch`, and
`gather_batch` where the loop cuts batches from a split held on the device) is wrapped to record
a digest of exactly the batch it handed the engine, training and evaluation, in one layout
(NCHW float32 pixels, int64 labels): the check is of what each framework received, not of a
recomputation of what it should have received.
"""

import hashlib

import numpy as np
import pytest
from margins import check
from parity_helpers import FLAX_CPU, TORCH_CPU, flax_state, torch_state

from flax_impl import backend as flax_backend
from mnist_common import data, loaders
from mnist_common.config import Config
from mnist_common.loop import fit
from torch_impl import backend as torch_backend

SMALL_TRAIN = 300  # batch 64: 5 steps per epoch, the last one 44 images
SMALL_TEST = 200
BATCH_SIZE = 64
EPOCHS = 2  # 10 steps: an epoch end and two partial batches are crossed
# As test_trajectory.py: before drift compounds, losses agree to half a step's size. Adam
# amplifies weights whose gradient is near its eps (one step can move them by up to lr either
# way), and on 300 images that compounds fast: measured gaps <= 2.5e-5 over steps 1-9 (the
# partial batch and the epoch end included), 1.9e-4 at step 10; so the first 8 are compared.
LOSS_ATOL = 1e-4
LOSS_STEPS = 8


def digest(framework, batch):
    """A digest of one placed batch's pixels and labels, in torch's layout."""
    images, labels = batch[0], batch[1]
    if framework == "torch":
        images, labels = images.cpu().numpy(), labels.cpu().numpy()
    else:
        images = np.asarray(images).transpose(0, 3, 1, 2)  # NHWC -> NCHW
        labels = np.asarray(labels)
    h = hashlib.sha256()
    for array in (np.ascontiguousarray(images, np.float32), labels.astype(np.int64)):
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def recording(backend, name, received):
    """`backend.<name>`, also appending the digest of every batch it returns to `received`."""
    place = getattr(backend, name)

    def recorded(*args):
        batch = place(*args)
        received.append(digest(backend.FRAMEWORK, batch))
        return batch

    return recorded


def fit_recorded(backend, placement, state, out_dir, splits, mnist_root, permutation=None):
    """(metrics, batch digests) of `fit` on the small splits; `permutation` replaces the
    training order (the planted bug of the guard)."""
    received = []
    config = Config(epochs=EPOCHS, batch_size=BATCH_SIZE, data_dir=str(mnist_root),
                    out_dir=str(out_dir), progress=False, device="cpu")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load_arrays", lambda root, train: splits[train])
        for name in ("place_batch", "gather_batch"):
            if hasattr(backend, name):
                patch.setattr(backend, name, recording(backend, name, received))
        if permutation is not None:
            patch.setattr(loaders, "epoch_permutation", permutation)
        metrics = fit(config, backend, placement, state)
    return metrics, received


@pytest.fixture(scope="module")
def small_splits(mnist_root):
    train_x, train_y = data.load_arrays(mnist_root, train=True)
    test_x, test_y = data.load_arrays(mnist_root, train=False)
    return {True: (train_x[:SMALL_TRAIN], train_y[:SMALL_TRAIN]),
            False: (test_x[:SMALL_TEST], test_y[:SMALL_TEST])}


@pytest.fixture(scope="module")
def torch_fit(tmp_path_factory, canonical_weights, small_splits, mnist_root):
    return fit_recorded(torch_backend, TORCH_CPU, torch_state(canonical_weights),
                        tmp_path_factory.mktemp("torch"), small_splits, mnist_root)


@pytest.mark.slow
def test_fit_gives_both_the_same_batches_and_losses(tmp_path, canonical_weights, small_splits,
                                                    mnist_root, torch_fit):
    torch_metrics, torch_batches = torch_fit
    flax_metrics, flax_batches = fit_recorded(flax_backend, FLAX_CPU,
                                              flax_state(canonical_weights), tmp_path,
                                              small_splits, mnist_root)
    steps = EPOCHS * 5
    evaluations = EPOCHS * 1  # 200 test images: one evaluation batch per epoch end
    assert len(torch_batches) == len(flax_batches) == steps + evaluations
    check("fit: batches Flax received that differ from torch's",
          sum(a != b for a, b in zip(flax_batches, torch_batches, strict=True)), 0, group="fit")
    assert flax_batches == torch_batches
    assert torch_metrics["steps"] == flax_metrics["steps"] == steps
    torch_losses = np.array(torch_metrics["step_losses"])
    flax_losses = np.array(flax_metrics["step_losses"])
    assert len(torch_losses) == len(flax_losses) == steps
    check(f"fit: first {LOSS_STEPS} losses, max |Flax - torch|",
          np.abs(flax_losses[:LOSS_STEPS] - torch_losses[:LOSS_STEPS]).max(), LOSS_ATOL,
          group="fit")
    np.testing.assert_allclose(flax_losses[:LOSS_STEPS], torch_losses[:LOSS_STEPS], rtol=0,
                               atol=LOSS_ATOL)


@pytest.mark.slow
def test_fit_check_can_fail(tmp_path, canonical_weights, small_splits, mnist_root, torch_fit):
    # Guard: Flax trained in another (equally valid) order must fail both comparisons above.
    torch_metrics, torch_batches = torch_fit

    def other_order(seed, epoch, num_examples):
        return np.random.default_rng([seed + 1, epoch]).permutation(num_examples)

    flax_metrics, flax_batches = fit_recorded(flax_backend, FLAX_CPU,
                                              flax_state(canonical_weights), tmp_path,
                                              small_splits, mnist_root, permutation=other_order)
    assert len(flax_batches) == len(torch_batches)
    assert flax_batches != torch_batches
    gap = np.abs(np.array(flax_metrics["step_losses"]) - np.array(torch_metrics["step_losses"]))
    assert gap[:LOSS_STEPS].max() > LOSS_ATOL

"""Many steps per dispatch (`--steps-per-dispatch`, a `lax.scan` in Flax).

On 100 training images with --batch-size 16 an epoch is 7 steps (the last one 4 images), so
dispatches of 3 steps cross epoch ends and the partial batch. A dispatch must change nothing
but the number of host synchronisations: on one CPU the runs are bit-identical.
"""

import pytest
from cli_helpers import assert_same_run
from training_helpers import train_config, use_small_mnist

from mnist_common.checkpoints import load_checkpoint
from mnist_common.config import FRAMEWORKS, Config

pytestmark = pytest.mark.data


@pytest.fixture(scope="module", params=FRAMEWORKS)
def one_step_reference(request, tmp_path_factory, real_splits):
    """(framework, a 3-epoch run dispatching one step at a time)."""
    out_dir = tmp_path_factory.mktemp(f"reference-{request.param}")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_small_mnist(monkeypatch, real_splits)
        train_config(request.param, out_dir, epochs=3, steps_per_dispatch=1, device="cpu")
    return request.param, out_dir


def test_k_steps_per_dispatch_equal_k_single_steps(one_step_reference, small_mnist, tmp_path):
    framework, reference = one_step_reference
    metrics = train_config(framework, tmp_path, epochs=3, steps_per_dispatch=3, device="cpu")
    assert metrics["steps"] == 21
    assert_same_run(tmp_path, reference)


def test_a_whole_epoch_per_dispatch_equals_single_steps(one_step_reference, small_mnist,
                                                        tmp_path):
    framework, reference = one_step_reference
    # capped at an epoch
    train_config(framework, tmp_path, epochs=3, steps_per_dispatch=100, device="cpu")
    assert_same_run(tmp_path, reference)


def test_resume_across_a_dispatch_boundary_is_exact(one_step_reference, small_mnist, tmp_path):
    framework, reference = one_step_reference
    # 3 + 2 steps
    train_config(framework, tmp_path, epochs=3, max_steps=5, steps_per_dispatch=3, device="cpu")
    assert load_checkpoint(tmp_path).progress["global_step"] == 5
    train_config(framework, tmp_path, epochs=3, resume=True, steps_per_dispatch=4, device="cpu")
    assert_same_run(tmp_path, reference)


# --- Flax's lax.scan itself (used on a GPU; the CPU dispatches single steps, see backend) ---

# A scanned step rounds some Adam updates differently in the last bit. Over 12 steps at batch 64
# that is float32 training's usual drift: losses 3.8e-6 apart, weights 3.7e-8 apart in the median
# (1.5e-6 at the 90th percentile; a weight whose gradient is near Adam's eps can move by up to
# lr per step, so the largest gap, 2.4e-4, measures chaos, not the scan). Bounds: about 3x.
SCAN_LOSS_ATOL = 1e-5
SCAN_MEDIAN_WEIGHT_ATOL = 1e-7


@pytest.fixture(scope="module")
def flax_batches(real_splits):
    """(placement, `batches(size, count)`): the first `count` seed-0 batches of `size` images."""
    from flax_impl import backend
    from mnist_common import loaders

    placement = backend.select_placement("cpu")
    (images, labels), _ = real_splits
    split = backend.place_split(placement, images[:2000], labels[:2000])
    order = loaders.epoch_permutation(0, 0, 2000)

    def batches(size, count):
        return [backend.gather_batch(split, i) for i in loaders.index_batches(order, size)[:count]]
    return placement, batches


def _scanned(placement, batches, length):
    """Train from seed 0 in scans of `length` steps through `train_steps`, its scan path taken
    on the CPU as on a GPU (batches stacked, one `lax.scan`); (canonical weights, losses)."""
    import numpy as np

    from flax_impl import backend

    state, losses = backend.create_train_state(Config(), placement), []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backend, "_scans", lambda state, batches: True)
        for start in range(0, len(batches), length):
            state, chunk_losses = backend.train_steps(state, batches[start:start + length])
            losses += list(chunk_losses)
    return backend.state_to_arrays(state)[0], np.asarray(losses)


def test_flax_scans_of_any_length_agree_bit_for_bit(flax_batches):
    """What makes resume exact on a GPU: a dispatch boundary moves, the numbers do not."""
    import numpy as np

    placement, batches_of = flax_batches
    # Six steps of 16 images: a scanned step is slow on the CPU, in proportion to the batch
    # (this test took 41 s at batch 64 and 11 s at 16, 2-core EPYC), and whether a scan's
    # length changes a bit does not depend on the batch size. 5 leaves a last chunk of 1, so
    # three compiled lengths (6, 5, 1) cover a whole run, a longer scan with a remainder and one
    # step.
    batches = batches_of(16, 6)
    weights, losses = _scanned(placement, batches, 6)
    for length in (1, 5):
        other_weights, other_losses = _scanned(placement, batches, length)
        assert np.array_equal(other_losses, losses)
        for key in weights:
            assert np.array_equal(other_weights[key], weights[key]), key


def test_flax_scan_equals_single_steps_to_the_last_bit(flax_batches):
    import numpy as np

    from flax_impl import backend

    placement, batches_of = flax_batches
    batches = batches_of(64, 12)  # the size and length the bounds above were measured at
    state, losses = backend.create_train_state(Config(), placement), []
    for batch in batches:
        state, metrics = backend.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    single = backend.state_to_arrays(state)[0]
    scanned, scanned_losses = _scanned(placement, batches, 12)
    assert scanned_losses[0] == np.float32(losses[0])  # the same first forward
    loss_gap = np.abs(scanned_losses - np.float32(losses)).max()
    assert loss_gap <= SCAN_LOSS_ATOL, loss_gap
    gaps = np.concatenate([np.abs(scanned[k] - single[k]).ravel() for k in single])
    assert np.median(gaps) <= SCAN_MEDIAN_WEIGHT_ATOL, np.median(gaps)

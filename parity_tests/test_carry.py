"""One run carried across frameworks: `--resume-from` continues either framework's checkpoint.

torch trains some steps through its CLI's code path (`train_and_evaluate`), writing its
canonical checkpoint; a new run of each framework starts from that file (weights, Adam state,
position) with `--resume-from`. Flax continuing must follow torch continuing: the first 8
losses agree to 1e-4, as test_fit.py's fresh runs do (the same small set, so the same drift).
And the other way round. Every array goes through the files only, so a layout or a moment
mixed up in either framework's conversion (swapped exp_avg and exp_avg_sq cancel out in a round
trip) shows here. A continuation is also held against an uninterrupted run of its framework.
"""

import numpy as np
import pytest
from margins import check

from flax_impl import train as flax_train
from mnist_common import data
from mnist_common.checkpoints import load_checkpoint
from mnist_common.config import Config
from torch_impl import train as torch_train

SMALL_TRAIN, SMALL_TEST, BATCH_SIZE = 300, 200, 64  # 5 steps per epoch, the last of 44 images
FIRST_STEPS = 7  # the first run stops mid-epoch 2, after a partial batch and an epoch end
LOSS_STEPS = 8  # as test_fit.py: before the drift compounds (measured <= 2.5e-5 over 9 steps)
LOSS_ATOL = 1e-4  # half of one step's size (lr = 2e-4)
TRAIN = {"torch": torch_train.train_and_evaluate, "flax": flax_train.train_and_evaluate}


@pytest.fixture(scope="module")
def small_mnist(mnist_root):
    train_x, train_y = data.load_arrays(mnist_root, train=True)
    test_x, test_y = data.load_arrays(mnist_root, train=False)
    splits = {True: (train_x[:SMALL_TRAIN], train_y[:SMALL_TRAIN]),
              False: (test_x[:SMALL_TEST], test_y[:SMALL_TEST])}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load_arrays", lambda root, train: splits[train])
        yield mnist_root


def train(framework, mnist_root, out_dir, **flags):
    config = Config(epochs=4, batch_size=BATCH_SIZE, data_dir=str(mnist_root),
                    out_dir=str(out_dir), progress=False, device="cpu", **flags)
    return TRAIN[framework](config)


@pytest.mark.slow
@pytest.mark.parametrize("first", ["torch", "flax"])
def test_a_run_continues_in_the_other_framework(first, small_mnist, tmp_path_factory):
    other = "flax" if first == "torch" else "torch"
    start = tmp_path_factory.mktemp(f"{first}-start")
    started = train(first, small_mnist, start, max_steps=FIRST_STEPS)
    assert load_checkpoint(start).progress["global_step"] == FIRST_STEPS
    target = FIRST_STEPS + LOSS_STEPS
    same = train(first, small_mnist, tmp_path_factory.mktemp(f"{first}-on"), max_steps=target,
                 resume_from=str(start))
    crossed = train(other, small_mnist, tmp_path_factory.mktemp(f"{first}-to-{other}"),
                    max_steps=target, resume_from=str(start / "checkpoints"))
    assert crossed["framework"] == other and crossed["steps"] == same["steps"] == target
    # The history is carried: the first run's losses, then each continuation's own.
    assert crossed["step_losses"][:FIRST_STEPS] == started["step_losses"]
    gap = np.abs(np.array(crossed["step_losses"][FIRST_STEPS:]) -
                 np.array(same["step_losses"][FIRST_STEPS:]))
    check(f"carried run: {first} checkpoint continued in {other} vs in {first}, first "
          f"{LOSS_STEPS} losses", gap.max(), LOSS_ATOL, group="carry")
    assert gap.max() <= LOSS_ATOL, gap


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "flax"])
def test_resume_from_continues_as_an_uninterrupted_run(framework, small_mnist, tmp_path_factory):
    """Weights, Adam's moments and its step count all carried: continued with --resume-from,
    the run is the uninterrupted run's to the last bit, and its checkpoint's Adam step is the
    run's step (an optimizer started afresh would count from the resume)."""
    start = tmp_path_factory.mktemp(f"{framework}-part")
    train(framework, small_mnist, start, max_steps=FIRST_STEPS)
    target = FIRST_STEPS + LOSS_STEPS
    continued_dir = tmp_path_factory.mktemp(f"{framework}-continued")
    continued = train(framework, small_mnist, continued_dir, max_steps=target,
                      resume_from=str(start))
    whole = train(framework, small_mnist, tmp_path_factory.mktemp(f"{framework}-whole"),
                  max_steps=target)
    assert continued["step_losses"] == whole["step_losses"]
    assert continued["test_loss"] == whole["test_loss"]
    saved = load_checkpoint(continued_dir)
    assert saved.progress["global_step"] == target
    assert int(np.asarray(saved.optimizer["step"]).reshape(-1)[0]) == target

"""A run whose loss or weights stop being finite stops there: one line naming the step (also
inside a dispatch of many steps), the last good checkpoint kept (and exact to resume from) or,
before the first, nothing written at all. In-process, on the small set.
"""

import numpy as np
import pytest
from cli_helpers import assert_same_run
from training_helpers import checkpoint_step, nan_loss_at_step, train_cli, train_config

from mnist_common.config import FRAMEWORKS
from mnist_common.errors import UsageError
from torch_impl import backend as torch_backend

pytestmark = pytest.mark.data

# --- the loss -----------------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(small_mnist, torch_reference,
                                                           tmp_path, monkeypatch):
    real_step = nan_loss_at_step(monkeypatch, torch_backend, 10)
    out_dir = tmp_path / "run"
    with pytest.raises(UsageError) as err:
        train_config("torch", out_dir, epochs=3)
    assert "training loss became nan at step 10 (epoch 2)" in str(err.value)
    assert "the last good checkpoint (step 7) is kept" in str(err.value)
    assert checkpoint_step(out_dir) == 7
    assert not any((out_dir / name).exists() for name in ("metrics.json", "model.safetensors"))
    # The kept checkpoint is good: resuming from it gives the uninterrupted run.
    monkeypatch.setattr(torch_backend, "train_step", real_step)
    train_config("torch", out_dir, epochs=3, resume=True)
    assert_same_run(out_dir, torch_reference)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_huge_lr_really_diverges(framework, small_mnist, tmp_path):
    """--lr 1e30 makes the loss NaN at step 2, for real: no outputs, no checkpoint."""
    with pytest.raises(UsageError) as err:
        train_config(framework, tmp_path, epochs=1, lr=1e30)
    message = str(err.value)
    assert message.startswith("training loss became nan at step 2 (epoch 1)")
    assert "no checkpoint was written" in message and "smaller --lr" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even the run's lock file


def test_nan_inside_a_dispatch_is_reported_at_its_step(small_mnist, tmp_path, monkeypatch):
    nan_loss_at_step(monkeypatch, torch_backend, 9)
    with pytest.raises(UsageError) as err:
        # steps 8-10 are one dispatch
        train_config("torch", tmp_path, epochs=3, steps_per_dispatch=4, device="cpu")
    assert "training loss became nan at step 9 (epoch 2)" in str(err.value)
    assert "the last good checkpoint (step 7) is kept" in str(err.value)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_diverging_loss_inside_a_scan_is_reported_at_its_step(framework, small_mnist, tmp_path):
    """--lr 1e30: the loss is NaN from step 2, inside the first dispatch of 5 steps."""
    with pytest.raises(UsageError) as err:
        train_config(framework, tmp_path, epochs=1, lr=1e30, steps_per_dispatch=5, device="cpu")
    assert str(err.value).startswith("training loss became nan at step 2 (epoch 1)")


# --- the weights ---------------------------------------------------------------------------------


def test_non_finite_weights_are_never_checkpointed(small_mnist, tmp_path, monkeypatch):
    real = torch_backend.state_to_arrays

    def poisoned(state):
        params, optimizer = real(state)
        params["layer.0.bias"] = np.full_like(params["layer.0.bias"], np.inf)
        return params, optimizer

    monkeypatch.setattr(torch_backend, "state_to_arrays", poisoned)
    with pytest.raises(UsageError, match=r"weights \(layer.0.bias\) became NaN or infinite"):
        train_config("torch", tmp_path, epochs=1)
    assert not (tmp_path / "checkpoints").exists()


# --- what a failed run leaves ------------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_failed_run_removes_the_directories_it_created(framework, small_mnist, tmp_path, capsys):
    (tmp_path / "kept").mkdir()
    out_dir = tmp_path / "kept" / "a" / "b"
    code, _, err = train_cli(framework, out_dir, capsys, "--lr", "1e30")
    assert code == 2 and "training loss became nan at step 2" in err, err
    assert list((tmp_path / "kept").iterdir()) == []  # a/b gone, the user's folder stays


"""--resume in-process on a 100-image training set: every way of stopping, then bit-identical.

With --batch-size 16 an epoch is 7 steps (the last one 4 images), so a few dozen steps cross
epoch ends, a partial last batch, --max-steps stops mid-epoch and at an epoch's end.
"""

import os
import signal

import numpy as np
import pytest
from cli_helpers import assert_same_run, nan_loss_at_step, read_run, use_small_mnist

from mnist_common.checkpoints import load_checkpoint
from mnist_common.config import Config
from mnist_common.errors import UsageError
from torch_impl import backend as torch_backend
from torch_impl import train as torch_train

pytestmark = pytest.mark.data
STEPS_PER_EPOCH = 7


def train(framework, out_dir, **flags):
    """One in-process training run, as the CLI would do it."""
    config = Config(batch_size=16, out_dir=str(out_dir), progress=False, **flags)
    if framework == "torch":
        return torch_train.train_and_evaluate(config)
    from flax_impl import train as flax_train

    return flax_train.train_and_evaluate(config)


def checkpoint_step(out_dir):
    return load_checkpoint(out_dir).progress["global_step"]


def without_timing(records):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]


@pytest.fixture(scope="module")
def torch_reference(tmp_path_factory, real_splits):
    """An uninterrupted 3-epoch torch run (21 steps) on the small set."""
    out_dir = tmp_path_factory.mktemp("torch-reference")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_small_mnist(monkeypatch, real_splits)
        train("torch", out_dir, epochs=3)
    return out_dir


def test_torch_resume_chain_is_bit_identical(small_mnist, torch_reference, tmp_path, capsys):
    out_dir = tmp_path / "run"
    train("torch", out_dir, epochs=3, max_steps=3)  # stops mid-epoch 1
    assert checkpoint_step(out_dir) == 3
    train("torch", out_dir, epochs=3, max_steps=7, resume=True)  # to epoch 1's end
    assert checkpoint_step(out_dir) == 7
    assert "resuming from" in capsys.readouterr().err
    metrics = train("torch", out_dir, epochs=1, resume=True)  # already there: outputs only
    assert "nothing to train" in capsys.readouterr().err
    assert metrics["steps"] == 7 and len(metrics["epochs"]) == 1
    train("torch", out_dir, epochs=2, max_steps=9, resume=True)  # into epoch 2
    assert checkpoint_step(out_dir) == 9
    metrics = train("torch", out_dir, epochs=3, resume=True)  # no --max-steps: to the end
    assert checkpoint_step(out_dir) == 21
    assert_same_run(out_dir, torch_reference)
    expected, _ = read_run(torch_reference)
    assert without_timing(metrics["epochs"]) == without_timing(expected["epochs"])
    assert [r["step"] for r in metrics["epochs"]] == [7, 14, 21]

    # --resume of a finished run: a no-op that rewrites the same outputs.
    (out_dir / "metrics.json").unlink()
    train("torch", out_dir, epochs=3, resume=True)
    assert "nothing to train" in capsys.readouterr().err
    assert_same_run(out_dir, torch_reference)


def test_flax_resume_chain_is_bit_identical(small_mnist, jax_compile_cache, tmp_path, capsys):
    reference, out_dir = tmp_path / "reference", tmp_path / "run"
    train("flax", reference, epochs=2)
    train("flax", out_dir, epochs=2, max_steps=3)
    train("flax", out_dir, epochs=2, max_steps=7, resume=True)
    assert checkpoint_step(out_dir) == 7
    train("flax", out_dir, epochs=2, resume=True)
    assert checkpoint_step(out_dir) == 14
    assert_same_run(out_dir, reference)


def test_sigint_between_steps_then_resume(small_mnist, torch_reference, tmp_path, monkeypatch,
                                          capsys):
    """A real SIGINT at step 10 (in-process): checkpoint, resume line, exit 130; then equal."""
    real_step, calls = torch_backend.train_step, [0]

    def step_then_sigint(state, batch):
        calls[0] += 1
        if calls[0] == 10:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the step runs
        return real_step(state, batch)

    monkeypatch.setattr(torch_backend, "train_step", step_then_sigint)
    out_dir = tmp_path / "run"
    # Python's KeyboardInterrupt handler, or SIG_IGN when this process started in the background
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_:
        train("torch", out_dir, epochs=3)
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert "SIGINT after step 10 (epoch 2, batch 3 of 7)" in err
    assert f"--resume --out-dir {out_dir} --epochs 3 --batch-size 16 --no-progress" in err
    assert checkpoint_step(out_dir) == 10
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is restored

    # A fresh run must not throw the unfinished run away.
    monkeypatch.setattr(torch_backend, "train_step", real_step)
    with pytest.raises(UsageError, match="holds the checkpoint of an unfinished run"):
        train("torch", out_dir, epochs=3)
    train("torch", out_dir, epochs=3, resume=True)
    assert_same_run(out_dir, torch_reference)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(small_mnist, torch_reference,
                                                           tmp_path, monkeypatch):
    real_step = nan_loss_at_step(monkeypatch, torch_backend, 10)
    out_dir = tmp_path / "run"
    with pytest.raises(UsageError) as err:
        train("torch", out_dir, epochs=3)
    assert "training loss became nan at step 10 (epoch 2)" in str(err.value)
    assert "the last good checkpoint (step 7) is kept" in str(err.value)
    assert checkpoint_step(out_dir) == 7
    assert not any((out_dir / name).exists() for name in ("metrics.json", "model.safetensors"))
    # The kept checkpoint is good: resuming from it gives the uninterrupted run.
    monkeypatch.setattr(torch_backend, "train_step", real_step)
    train("torch", out_dir, epochs=3, resume=True)
    assert_same_run(out_dir, torch_reference)


@pytest.mark.parametrize("framework", ["torch", "flax"])
def test_huge_lr_really_diverges(framework, small_mnist, jax_compile_cache, tmp_path):
    """--lr 1e30 makes the loss NaN at step 2, for real: no outputs, no checkpoint."""
    with pytest.raises(UsageError) as err:
        train(framework, tmp_path, epochs=1, lr=1e30)
    message = str(err.value)
    assert message.startswith("training loss became nan at step 2 (epoch 1)")
    assert "no checkpoint was written" in message and "smaller --lr" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even the run's lock file


def test_non_finite_weights_are_never_checkpointed(small_mnist, tmp_path, monkeypatch):
    real = torch_backend.state_to_arrays

    def poisoned(state):
        params, optimizer = real(state)
        params["layer.0.bias"] = np.full_like(params["layer.0.bias"], np.inf)
        return params, optimizer

    monkeypatch.setattr(torch_backend, "state_to_arrays", poisoned)
    with pytest.raises(UsageError, match=r"weights \(layer.0.bias\) became NaN or infinite"):
        train("torch", tmp_path, epochs=1)
    assert not (tmp_path / "checkpoints").exists()


@pytest.fixture(scope="module")
def finished_checkpoint(tmp_path_factory, real_splits):
    """A torch run stopped by --max-steps 3 (finished, checkpoint at step 3)."""
    out_dir = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_small_mnist(monkeypatch, real_splits)
        train("torch", out_dir, epochs=3, max_steps=3)
    return out_dir


@pytest.mark.parametrize("flags, words", [
    ({"batch_size": 32}, "made with --batch-size 16, not 32; resume with --batch-size 16"),
    ({"lr": 1e-3}, "made with --lr 0.0002, not 0.001"),
    ({"seed": 1}, "made with --seed 0, not 1"),
])
def test_resume_with_other_hyper_parameters_is_refused(finished_checkpoint, flags, words):
    before = (finished_checkpoint / "metrics.json").read_bytes()
    config = Config(**{"batch_size": 16, "epochs": 3, "out_dir": str(finished_checkpoint),
                       "progress": False, "resume": True, **flags})
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        torch_train.train_and_evaluate(config)
    assert (finished_checkpoint / "metrics.json").read_bytes() == before
    assert checkpoint_step(finished_checkpoint) == 3


def test_resume_below_the_checkpoint_is_refused(small_mnist, finished_checkpoint):
    with pytest.raises(UsageError, match="at step 3, past the 2 steps"):
        train("torch", finished_checkpoint, epochs=3, max_steps=2, resume=True)


def test_resume_with_the_other_framework_is_refused(small_mnist, jax_compile_cache,
                                                    finished_checkpoint):
    with pytest.raises(UsageError, match="written by python -m torch_impl.train"):
        train("flax", finished_checkpoint, epochs=3, resume=True)


def test_fresh_run_replaces_a_finished_run_only_when_asked(small_mnist, finished_checkpoint,
                                                           tmp_path):
    import shutil

    out_dir = tmp_path / "copy"
    shutil.copytree(finished_checkpoint, out_dir)
    with pytest.raises(UsageError, match="made with --max-steps 3, not 2; pass --overwrite"):
        train("torch", out_dir, epochs=3, max_steps=2)
    assert checkpoint_step(out_dir) == 3
    train("torch", out_dir, epochs=3, max_steps=2, overwrite=True)
    assert checkpoint_step(out_dir) == 2

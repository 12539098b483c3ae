"""Signals stop a training run cleanly: Ctrl-C (SIGINT) and SIGTERM save a checkpoint at the step
boundary, say how to resume, exit 130 or 143 and restore the handlers; a second Ctrl-C quits at
once, keeping the last checkpoint; the resumed run equals the uninterrupted one, bit for bit.
The test, not the machine's speed, decides where a run is interrupted. In-process on the small
set, and once as the real command.
"""

import os
import re
import shlex
import signal

import pytest
from cli_helpers import (
    assert_same_run,
    finish,
    run_cli_subprocess,
    start_cli,
    start_cli_paused_at_step,
    wait_for_file,
)
from disk_helpers import litter
from training_helpers import checkpoint_step, train_cli, train_config

from mnist_common.checkpoints import LATEST, checkpoint_root, load_checkpoint
from mnist_common.config import FRAMEWORKS, cli_name
from mnist_common.errors import UsageError
from torch_impl import backend as torch_backend

pytestmark = pytest.mark.data

# --- the real command ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sigint_runs(mnist_root, tmp_path_factory):
    """An 80-step run sent SIGINT while it is paused after step 5 (the pause is the test's, so a
    fast machine cannot finish first), beside the same run uninterrupted."""
    base = tmp_path_factory.mktemp("sigint")
    flags = ["--batch-size", 16, "--max-steps", 80, "--no-progress"]
    reference = start_cli("torch_impl.train", *flags, "--out-dir", base / "reference")
    process = start_cli_paused_at_step("torch_impl.train", 5, base / "paused", *flags,
                                       "--out-dir", base / "run")
    paused_at = int(wait_for_file(base / "paused", process))
    process.send_signal(signal.SIGINT)
    interrupted = finish(process)
    done = finish(reference)
    assert done.returncode == 0, done.stderr
    return base, interrupted, paused_at


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(sigint_runs):
    base, interrupted, step = sigint_runs
    terminal = interrupted.stderr
    assert interrupted.returncode == 130, terminal
    assert "Traceback" not in terminal and interrupted.stdout == ""
    match = re.search(r"SIGINT after step (\d+) \(epoch 1, batch \1 of 3750\); checkpoint saved "
                      r"in (\S+)\. Resume with: (.+?)\s*$", terminal, re.MULTILINE)
    assert match, terminal
    assert int(match.group(1)) == step and 5 <= step < 80  # where the test paused the run
    assert (base / "run" / "checkpoints" / "latest").read_text() == f"step-{step:07d}\n"
    assert not (base / "run" / "metrics.json").exists()

    # The printed command finishes the run; the result is the uninterrupted one, bit for bit.
    command = shlex.split(match.group(3))
    assert command[:3] == ["python", "-m", "torch_impl.train"]
    resumed = run_cli_subprocess(command[2], *command[3:])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {base / 'run' / 'checkpoints'}" in resumed.stderr
    assert_same_run(base / "run", base / "reference")


# --- in-process ----------------------------------------------------------------------------------


def signal_at_step(monkeypatch, framework, step, *signums):
    """The engine's `train_steps` sends `signums` to this process once `step` steps are done:
    the test, not the machine's speed, decides where the run is interrupted."""
    import importlib

    backend = importlib.import_module(f"{framework}_impl.backend")
    real, done = backend.train_steps, [0]

    def train_steps(state, batches):
        state, losses = real(state, batches)
        before, done[0] = done[0], done[0] + len(losses)
        if before < step <= done[0]:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return state, losses

    monkeypatch.setattr(backend, "train_steps", train_steps)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_sigterm_saves_a_checkpoint_and_exits_143(framework, small_mnist,
                                                  tmp_path, monkeypatch, capsys):
    signal_at_step(monkeypatch, framework, 10, signal.SIGTERM)
    out_dir = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGTERM)
    code, out, err = train_cli(framework, out_dir, capsys, epochs=3)
    assert code == 143, err
    assert out == "" and "Traceback" not in err
    assert (f"{cli_name(framework)}: SIGTERM after step 10 (epoch 2, batch 3 of 7); checkpoint "
            f"saved in {checkpoint_root(out_dir)}. Resume with: {cli_name(framework)} --resume "
            f"--out-dir {out_dir} --epochs 3 --batch-size 16 --no-progress") in err
    assert load_checkpoint(out_dir).progress["global_step"] == 10
    assert signal.getsignal(signal.SIGTERM) is handler_before
    assert not (out_dir / "metrics.json").exists() and litter(out_dir) == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_second_ctrl_c_quits_at_once_keeping_the_last_checkpoint(
        framework, small_mnist, tmp_path, monkeypatch, capsys):
    # Two Ctrl-C at step 10: the first asks for a stop at the step boundary, the second gets
    # Python's own handler back and quits at once, before the stop writes step 10's checkpoint.
    signal_at_step(monkeypatch, framework, 10, signal.SIGINT, signal.SIGINT)
    out_dir = tmp_path / "run"
    # As in a terminal (a shell's background job would start with SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, out, err = train_cli(framework, out_dir, capsys, epochs=3)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130, err
    assert out == "" and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()][-1] == \
        f"{cli_name(framework)}: interrupted"
    assert (checkpoint_root(out_dir) / LATEST).read_text() == "step-0000007\n"  # epoch 1's end
    assert load_checkpoint(out_dir).progress["global_step"] == 7
    assert not (out_dir / "metrics.json").exists() and litter(out_dir) == []


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
        train_config("torch", out_dir, epochs=3)
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert "SIGINT after step 10 (epoch 2, batch 3 of 7)" in err
    assert f"--resume --out-dir {out_dir} --epochs 3 --batch-size 16 --no-progress" in err
    assert checkpoint_step(out_dir) == 10
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is restored

    # A fresh run must not throw the unfinished run away.
    monkeypatch.setattr(torch_backend, "train_step", real_step)
    with pytest.raises(UsageError, match="holds the checkpoint of an unfinished run"):
        train_config("torch", out_dir, epochs=3)
    train_config("torch", out_dir, epochs=3, resume=True)
    assert_same_run(out_dir, torch_reference)


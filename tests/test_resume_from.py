"""--resume-from refuses, in one line with exit status 2, a checkpoint it cannot use; and takes
every form of PATH it documents. (The run carried across frameworks: parity_tests/test_carry.py.)
"""

import json

import pytest
from checkpoint_writer import arrays
from cli_helpers import assert_usage_error, run_cli_subprocess, run_in_process

from mnist_common.checkpoints import ARRAY_FILES, load_checkpoint_at, save_checkpoint
from mnist_common.config import cli_name
from mnist_common.errors import UsageError
from torch_impl import train as torch_train

PROG = cli_name("torch")


@pytest.fixture
def checkpoint(tmp_path):
    """A run dir holding a complete step-3 checkpoint (batch size 16)."""
    run = tmp_path / "earlier"
    run.mkdir()
    return run, save_checkpoint(run, *arrays(3))


def refused(capsys, tmp_path, resume_from, *flags):
    argv = ["--resume-from", str(resume_from), "--out-dir", str(tmp_path / "new"),
            "--batch-size", "16", "--device", "cpu", "--no-progress", *flags]
    code, _, err = run_in_process(torch_train.main, argv, PROG, capsys)
    assert not (tmp_path / "new").exists()  # refused before the out-dir was made
    return code, err


def test_every_documented_path_names_the_checkpoint(checkpoint):
    run, step_dir = checkpoint
    for path in (run, run / "checkpoints", step_dir, step_dir / "progress.json"):
        assert load_checkpoint_at(path).path == step_dir, path


def test_a_missing_path_is_refused_in_one_line(tmp_path):
    result = run_cli_subprocess("torch_impl.train", "--resume-from", str(tmp_path / "nowhere"),
                                "--out-dir", str(tmp_path / "new"), "--no-progress")
    assert_usage_error(result.returncode, result.stderr, PROG, "--resume-from",
                       "does not exist")


def test_a_dir_without_a_checkpoint_is_refused(capsys, tmp_path):
    code, err = refused(capsys, tmp_path, tmp_path)
    assert_usage_error(code, err, PROG, "--resume-from", "holds no checkpoint")


def test_a_damaged_checkpoint_is_refused(capsys, tmp_path, checkpoint):
    _, step_dir = checkpoint
    with open(step_dir / ARRAY_FILES[1], "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    code, err = refused(capsys, tmp_path, step_dir)
    assert_usage_error(code, err, PROG, "--resume-from", "damaged", "SHA-256")


def test_another_models_checkpoint_is_refused(capsys, tmp_path, checkpoint):
    # Weights of another shape (a wider first layer), hashes and all consistent.
    params, optimizer, progress = arrays(3)
    params["layer.0.weight"] = params["layer.0.weight"].repeat(2, axis=0)
    run = tmp_path / "other-model"
    run.mkdir()
    save_checkpoint_unchecked(run, params, optimizer, progress)
    code, err = refused(capsys, tmp_path, run)
    assert_usage_error(code, err, PROG, "--resume-from", "layer.0.weight")


def save_checkpoint_unchecked(run, params, optimizer, progress):
    """A checkpoint whose weights need not be this model's (save_weights would refuse them)."""
    from mnist_common import checkpoints

    original = checkpoints.save_weights
    checkpoints.save_weights = checkpoints.save_arrays
    try:
        return save_checkpoint(run, params, optimizer, progress)
    finally:
        checkpoints.save_weights = original


@pytest.mark.parametrize("flag,value", [("--batch-size", "32"), ("--lr", "0.001"),
                                        ("--seed", "1")])
def test_a_checkpoint_of_other_flags_is_refused(capsys, tmp_path, checkpoint, flag, value):
    run, _ = checkpoint
    code, err = refused(capsys, tmp_path, run, flag, value)
    assert_usage_error(code, err, PROG, "--resume-from", f"{flag} ", "pass")


def test_resume_and_resume_from_together_are_refused(capsys, tmp_path, checkpoint):
    run, _ = checkpoint
    code, err = refused(capsys, tmp_path, run, "--resume")
    assert_usage_error(code, err, PROG, "--resume-from", "one of them")


def test_a_progress_record_without_its_config_is_refused(checkpoint):
    _, step_dir = checkpoint
    record = json.loads((step_dir / "progress.json").read_text())
    del record["config"]
    (step_dir / "progress.json").write_text(json.dumps(record))
    with pytest.raises(UsageError, match="damaged"):
        load_checkpoint_at(step_dir)

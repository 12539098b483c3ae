"""Checkpoint files: round trip, damage reported, SIGKILL mid-write never leaves one trusted."""

import json
from pathlib import Path

import numpy as np
import pytest
from checkpoint_writer import USER_FILE, arrays
from cli_helpers import run_python
from safetensors.numpy import save_file

from mnist_common.checkpoints import LATEST, checkpoint_root, load_checkpoint, save_checkpoint
from mnist_common.errors import UsageError
from mnist_common.ownership import RECORD_NAME
from mnist_common.rundir import locked
from mnist_common.weights import CANONICAL_SHAPES

WRITER = Path(__file__).resolve().parent / "checkpoint_writer.py"


def assert_holds_step(out_dir, step=None):
    """The checkpoint loads, is internally consistent, and (if given) is at `step`."""
    checkpoint = load_checkpoint(out_dir)
    found = checkpoint.progress["global_step"]
    params, optimizer, progress = arrays(found)
    for key in CANONICAL_SHAPES:
        assert np.array_equal(checkpoint.params[key], params[key]), key
    assert optimizer.keys() == checkpoint.optimizer.keys()
    for key in optimizer:
        assert np.array_equal(checkpoint.optimizer[key], optimizer[key]), key
    assert checkpoint.progress["step_losses"] == progress["step_losses"]
    if step is not None:
        assert found == step
    return found


def entries(out_dir):
    """The store's entries, but for its ownership record."""
    return sorted(p.name for p in checkpoint_root(out_dir).iterdir() if p.name != RECORD_NAME)


def test_round_trip_and_only_the_newest_is_kept(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, *arrays(step))
    assert assert_holds_step(tmp_path, 3) == 3
    assert entries(tmp_path) == ["latest", "step-0000003"]
    assert (checkpoint_root(tmp_path) / LATEST).read_text() == "step-0000003\n"


def test_saving_the_same_step_again_never_touches_the_live_one(tmp_path):
    save_checkpoint(tmp_path, *arrays(4))
    save_checkpoint(tmp_path, *arrays(4))
    assert entries(tmp_path) == ["latest", "step-0000004-1"]
    save_checkpoint(tmp_path, *arrays(4))
    assert entries(tmp_path) == ["latest", "step-0000004"]
    assert_holds_step(tmp_path, 4)


def test_no_checkpoint_is_a_clean_error(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint in"):
        load_checkpoint(tmp_path)


def _rewrite_hashes(directory):
    """Make progress.json's recorded hashes match the (edited) files again."""
    import hashlib

    progress_file = directory / "progress.json"
    progress = json.loads(progress_file.read_text())
    for name in progress["files"]:
        progress["files"][name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    progress_file.write_text(json.dumps(progress))


def _flip_a_byte(directory):
    path = directory / "model.safetensors"
    content = bytearray(path.read_bytes())
    content[-5] ^= 0x01  # inside the last weight: still a valid safetensors file
    path.write_bytes(bytes(content))


def _truncate_optimizer(directory):
    path = directory / "optimizer.safetensors"
    path.write_bytes(path.read_bytes()[:1000])


def _optimizer_of_another_step(directory):
    _, optimizer, _ = arrays(7)
    save_file(optimizer, str(directory / "optimizer.safetensors"))
    _rewrite_hashes(directory)


def _nan_weights(directory):
    params, _, _ = arrays(2)
    params["fc_layer.2.bias"][3] = np.nan
    save_file(params, str(directory / "model.safetensors"))
    _rewrite_hashes(directory)


def _wrong_shapes(directory):
    params, _, _ = arrays(2)
    params["fc_layer.2.bias"] = np.zeros(11, np.float32)
    save_file(params, str(directory / "model.safetensors"))
    _rewrite_hashes(directory)


def _edit_progress(**changes):
    def edit(directory):
        path = directory / "progress.json"
        progress = json.loads(path.read_text())
        progress.update(changes)
        path.write_text(json.dumps(progress))
    return edit


DAMAGES = {
    "latest names a missing directory": lambda d: (d.parent / LATEST).write_text("step-0000009\n"),
    "latest escapes the checkpoint dir": lambda d: (d.parent / LATEST).write_text("../../etc\n"),
    "latest is binary junk": lambda d: (d.parent / LATEST).write_bytes(b"\xff\xfe\x00"),
    "progress.json missing": lambda d: (d / "progress.json").unlink(),
    "progress.json not JSON": lambda d: (d / "progress.json").write_text("{not json"),
    "progress.json a list": lambda d: (d / "progress.json").write_text("[1, 2]"),
    "progress.json step is text": _edit_progress(global_step="2"),
    "progress.json loss is NaN": _edit_progress(step_losses=[1.0, float("nan")]),
    "progress.json loss count": _edit_progress(step_losses=[1.0]),
    "model.safetensors missing": lambda d: (d / "model.safetensors").unlink(),
    "model.safetensors bit flip": _flip_a_byte,
    "optimizer.safetensors truncated": _truncate_optimizer,
    "optimizer of another step": _optimizer_of_another_step,
    "NaN weights": _nan_weights,
    "wrong shapes": _wrong_shapes,
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_damaged_checkpoint_is_one_line_error(tmp_path, damage):
    directory = save_checkpoint(tmp_path, *arrays(2))
    damage(directory)
    with pytest.raises(UsageError) as err:
        load_checkpoint(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "damaged" in message
    assert str(checkpoint_root(tmp_path)) in message


def test_a_manifest_with_a_hash_that_is_not_hex_is_damaged(tmp_path):
    directory = save_checkpoint(tmp_path, *arrays(2))
    path = directory / "progress.json"
    progress = json.loads(path.read_text())
    progress["files"]["model.safetensors"] = "yes"
    path.write_text(json.dumps(progress))
    with pytest.raises(UsageError, match="does not name and hash every file"):
        load_checkpoint(tmp_path)



def test_a_second_run_cannot_take_the_same_out_dir(tmp_path):
    with locked(tmp_path, created=False):
        with pytest.raises(UsageError, match="another training run is using it"):
            with locked(tmp_path, created=False):
                pass
    with locked(tmp_path, created=False):  # released on exit
        pass


# --- SIGKILL while writing ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_writers(tmp_path_factory):
    """Run the four kill experiments of checkpoint_writer.py."""
    base = tmp_path_factory.mktemp("killed")
    done = run_python(WRITER, base, "20240607", "12", timeout=240)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _rerun_succeeds(out_dir):
    """A later save in the same dir works and clears every trace of the killed writer.

    Its step is beyond any a killed writer can have reached, so the new checkpoint gets the
    plain name (a save at the live checkpoint's own step would be `step-NNNNNNN-1`)."""
    save_checkpoint(out_dir, *arrays(5000))
    assert entries(out_dir) == ["latest", "step-0005000"]
    assert_holds_step(out_dir, 5000)


def test_kill_at_every_step_of_a_save_keeps_a_complete_checkpoint(killed_writers):
    result = killed_writers["previous"]
    assert result["completed_at"] is not None and len(result["killed"]) >= 20
    outcomes = [assert_holds_step(out_dir) for out_dir in result["killed"]]
    assert set(outcomes) == {1, 2}  # the kills span the commit point, and nothing else is seen
    # Before the commit point, the old checkpoint; after it, the new one; never a mix.
    commit = outcomes.index(2)
    assert outcomes == [1] * commit + [2] * (len(outcomes) - commit)
    for out_dir in result["killed"]:
        _rerun_succeeds(out_dir)


def test_kill_during_the_first_save_leaves_no_checkpoint_or_a_complete_one(killed_writers):
    result = killed_writers["first"]
    assert result["completed_at"] is not None
    outcomes = []
    for out_dir in result["killed"]:
        try:
            outcomes.append(assert_holds_step(out_dir, 2))
        except UsageError as err:
            assert str(err).startswith("no checkpoint in")
            outcomes.append(None)
    assert None in outcomes and 2 in outcomes
    for out_dir in result["killed"]:
        _rerun_succeeds(out_dir)


def test_kill_at_every_step_of_a_save_keeps_a_users_file_beside_checkpoint_files(
        killed_writers):
    """The user's file in the live checkpoint's directory, beside its files: no kill, no later
    save and none of its prunes deletes it (the directory is kept whole: it is not only ours)."""
    result = killed_writers["beside"]
    assert result["completed_at"] is not None and len(result["killed"]) >= 20
    completed = Path(result["killed"][0]).parent / f"kill-{result['completed_at']:03d}"
    directory, name, text = USER_FILE
    for out_dir in [*result["killed"], completed]:
        user_file = checkpoint_root(out_dir) / directory / name
        assert user_file.read_text() == text, out_dir
        assert assert_holds_step(out_dir) in (1, 2)
        for step in (5000, 5001):  # two later saves: each prunes what the last one superseded
            save_checkpoint(out_dir, *arrays(step))
            assert user_file.read_text() == text, out_dir
        assert_holds_step(out_dir, 5001)
        assert entries(out_dir) == ["latest", directory, "step-0005001"]


def test_kill_at_random_moments_of_repeated_saves(killed_writers):
    steps = [assert_holds_step(out_dir) for out_dir in killed_writers["random"]["killed"]]
    assert all(step >= 1 for step in steps)
    for out_dir in killed_writers["random"]["killed"]:
        _rerun_succeeds(out_dir)

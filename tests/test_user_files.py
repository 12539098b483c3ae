"""The user's files are the user's: a run, an evaluation and compare replace or delete only what
a run of the project wrote, for both frameworks (in-process, on the small set). A refused run
adds nothing to the directory, not even its lock file.
"""

import json

import pytest
from cli_helpers import EVALUATE, assert_usage_error, run_in_process
from training_helpers import train_cli

from mnist_common.checkpoints import checkpoint_root, load_checkpoint
from mnist_common.config import FRAMEWORKS, cli_name
from mnist_common.ownership import RECORD_NAME

OUTPUTS = ("model.safetensors", "metrics.json", "loss.png")  # the order messages name them


def tree(directory):
    """Every path under `directory` and the bytes of each file (None for a directory)."""
    return {str(p.relative_to(directory)): None if p.is_dir() else p.read_bytes()
            for p in sorted(directory.rglob("*"))}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_checkpoints_folder_keeps_the_users_files(framework, small_mnist, tmp_path, capsys):
    out_dir = tmp_path / "run"
    mine = checkpoint_root(out_dir)
    (mine / "old").mkdir(parents=True)
    (mine / "old" / "notes.txt").write_text("mine")
    (mine / "my_model.pt").write_text("w")
    (mine / "step-0000009").mkdir()  # a checkpoint's name, but not a checkpoint's contents
    (mine / "step-0000009" / "mine.txt").write_text("mine")
    for flags in (["--max-steps", 3], ["--max-steps", 5, "--resume"], ["--overwrite"]):
        code, _, err = train_cli(framework, out_dir, capsys, *flags)
        assert code == 0, err
        assert (mine / "old" / "notes.txt").read_text() == "mine"
        assert (mine / "my_model.pt").read_text() == "w"
        assert (mine / "step-0000009" / "mine.txt").read_text() == "mine"
    # The store still prunes its own superseded checkpoints: one of them is left.
    ours = sorted(p.name for p in mine.iterdir() if p.name.startswith("step-0000007"))
    assert ours == ["step-0000007"] and load_checkpoint(out_dir).progress["global_step"] == 7


def test_a_users_file_beside_checkpoint_files_survives_resume_and_overwrite(small_mnist,
                                                                             tmp_path, capsys):
    """A note put into the live checkpoint's directory, beside the files a run wrote, after
    each run: no later save, prune, resume or --overwrite deletes it (torch; the store is one)."""
    out_dir = tmp_path / "run"
    notes = {}
    runs = ((["--max-steps", 3], "step-0000003"), (["--max-steps", 5, "--resume"], "step-0000005"),
            (["--resume"], "step-0000007"),  # to the epoch's end
            (["--max-steps", 3, "--overwrite"], "step-0000003-1"))  # step-0000003 is not ours
    for flags, live in runs:
        code, _, err = train_cli("torch", out_dir, capsys, *flags)
        assert code == 0, err
        assert {path: path.read_text() for path in notes} == notes
        checkpoint = load_checkpoint(out_dir)
        assert checkpoint.path.name == live
        note = checkpoint.path / "notes.txt"
        notes[note] = f"mine, beside {live}'s files\n"
        note.write_text(notes[note])
    assert sorted(p.name for p in checkpoint_root(out_dir).iterdir()) == [
        RECORD_NAME, "latest", "step-0000003", "step-0000003-1", "step-0000005", "step-0000007"]


STRANGERS = {  # what a user's metrics.json may hold; None: there is none
    "no metrics.json": None,
    "not JSON": b"my notes\n",
    "a JSON object": b'{"accuracy": 0.99}\n',
    "a JSON list": b"[1, 2]\n",
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("metrics", STRANGERS, ids=list(STRANGERS))
def test_output_names_held_by_the_user_are_refused(framework, metrics, tmp_path, capsys):
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    (out_dir / "model.safetensors").write_bytes(b"my weights")
    (out_dir / "loss.png").write_bytes(b"my figure")
    if STRANGERS[metrics] is not None:
        (out_dir / "metrics.json").write_bytes(STRANGERS[metrics])
    before = tree(out_dir)
    names = ", ".join(n for n in OUTPUTS if (out_dir / n).exists())
    for flags in ([], ["--overwrite"], ["--max-steps", 2]):
        code, out, err = train_cli(framework, out_dir, capsys, *flags)
        assert_usage_error(code, err, cli_name(framework), f"--out-dir {out_dir}: {names} were not "
                           f"written by a run of this project (not in its {RECORD_NAME}); move "
                           "them away or choose another directory")
        assert out == "" and tree(out_dir) == before  # not even .train.lock was added


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_file_put_in_place_of_an_output_is_the_users(framework, small_mnist, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, _, err = train_cli(framework, out_dir, capsys, "--max-steps", 3)
    assert code == 0, err
    record = (out_dir / RECORD_NAME).read_bytes()
    (out_dir / "model.safetensors").write_bytes(b"my own weights")
    for flags in (["--max-steps", 3], ["--max-steps", 3, "--overwrite"],
                  ["--max-steps", 5, "--resume"]):
        code, _, err = train_cli(framework, out_dir, capsys, *flags)
        assert_usage_error(code, err, cli_name(framework), "model.safetensors was not written by a "
                           "run of this project", "move it away")
        assert (out_dir / "model.safetensors").read_bytes() == b"my own weights"
        assert (out_dir / RECORD_NAME).read_bytes() == record
    (out_dir / "model.safetensors").unlink()  # moved away: the same command trains again
    code, _, err = train_cli(framework, out_dir, capsys, "--max-steps", 3)
    assert code == 0, err
    assert (out_dir / "model.safetensors").read_bytes()[:8] != b"my own w"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_checkpoint_pointer_not_ours_is_refused(framework, tmp_path, capsys):
    out_dir = tmp_path / "run"
    checkpoint_root(out_dir).mkdir(parents=True)
    (checkpoint_root(out_dir) / "latest").write_text("my latest notes\n")
    code, _, err = train_cli(framework, out_dir, capsys)
    assert_usage_error(code, err, cli_name(framework), f"{checkpoint_root(out_dir) / 'latest'} is "
                       "not a checkpoint pointer of this project")
    assert (checkpoint_root(out_dir) / "latest").read_text() == "my latest notes\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["checkpoints"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_evaluate_out_replaces_only_an_earlier_evaluation(framework, weights_file, small_mnist,
                                                          tmp_path, capsys):
    weights = tmp_path / "good.safetensors"
    weights.write_bytes(weights_file.read_bytes())
    run_record = tmp_path / "metrics.json"
    run_record.write_text(json.dumps({"framework": "torch", "config": {}, "epochs": []}))
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    for target in (weights, run_record, notes):
        before = target.read_bytes()
        code, out, err = run_in_process(EVALUATE[framework], ["--weights", str(weights), "--out",
                                                              str(target)],
                                        cli_name(framework, "evaluate"), capsys)
        assert_usage_error(code, err, cli_name(framework, "evaluate"),
                           f"--out {target}: exists and is not an earlier evaluation's output")
        assert out == "" and target.read_bytes() == before
    out_file = tmp_path / "eval.json"
    for _ in range(2):  # written, then replaced: it is an evaluation's own output
        code, _, err = run_in_process(EVALUATE[framework], ["--weights", str(weights), "--out",
                                                            str(out_file)],
                                      cli_name(framework, "evaluate"), capsys)
        assert code == 0, err
        assert json.loads(out_file.read_text())["weights"] == str(weights)

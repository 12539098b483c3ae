"""What a run's directory may hold that is not the run's: names that only look like the
project's temp files, a `checkpoints` that is a file, a `checkpoints` that links to another
run's store. Each is refused before training, in one line with exit 2, and nothing is deleted;
a link to an empty folder elsewhere (a bigger disk) is used like the folder itself.
"""

import os

import pytest
from cli_helpers import assert_usage_error
from test_user_files import tree
from training_helpers import train_cli

from mnist_common.checkpoints import checkpoint_root, load_checkpoint
from mnist_common.config import FRAMEWORKS, cli_name


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_names_like_temp_files_are_kept_by_a_refused_run(framework, small_mnist, tmp_path,
                                                          capsys):
    out_dir = tmp_path / "out"
    (out_dir / ".loss.png.drafts.tmp").mkdir(parents=True)
    (out_dir / ".loss.png.drafts.tmp" / "figure1.svg").write_text("<svg/>")
    (out_dir / ".metrics.json.notes.tmp").write_text("notes")
    (out_dir / "model.safetensors").write_bytes(b"my own weights")
    before = tree(out_dir)
    code, _, err = train_cli(framework, out_dir, capsys, "--max-steps", 3)
    assert_usage_error(code, err, cli_name(framework), "model.safetensors was not written")
    assert tree(out_dir) == before


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_checkpoints_as_a_file_is_refused_before_training(framework, small_mnist, tmp_path,
                                                          capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    checkpoint_root(out_dir).write_text("mine")
    code, out, err = train_cli(framework, out_dir, capsys, "--max-steps", 3)
    assert_usage_error(code, err, cli_name(framework), "checkpoints", "not a directory")
    assert "training" not in out + err
    assert tree(out_dir) == {"checkpoints": b"mine"}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_link_to_another_runs_checkpoints_is_refused(framework, small_mnist, tmp_path,
                                                       capsys):
    first, second = tmp_path / "A", tmp_path / "B"
    code, _, err = train_cli(framework, first, capsys, "--max-steps", 3)
    assert code == 0, err
    second.mkdir()
    os.symlink(checkpoint_root(first), checkpoint_root(second))
    before = tree(first)
    for flags in ([], ["--overwrite"], ["--resume"]):
        code, out, err = train_cli(framework, second, capsys, "--seed", 1, "--max-steps", 5,
                                   *flags)
        assert_usage_error(code, err, cli_name(framework), "another run's checkpoints")
        assert tree(first) == before
    code, _, err = train_cli(framework, first, capsys, "--max-steps", 5, "--resume")
    assert code == 0, err


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_link_to_an_empty_folder_holds_the_checkpoints(framework, small_mnist, tmp_path,
                                                         capsys):
    elsewhere, out_dir = tmp_path / "big-disk" / "store", tmp_path / "out"
    elsewhere.mkdir(parents=True)
    out_dir.mkdir()
    os.symlink(elsewhere, checkpoint_root(out_dir))
    code, _, err = train_cli(framework, out_dir, capsys, "--max-steps", 3)
    assert code == 0, err
    assert load_checkpoint(out_dir).path.resolve().parent == elsewhere.resolve()
    code, _, err = train_cli(framework, out_dir, capsys, "--max-steps", 5, "--resume")
    assert code == 0, err
    assert checkpoint_root(out_dir).is_symlink()
    assert sorted(p.name for p in elsewhere.iterdir() if p.name.startswith("step-")) == [
        "step-0000005"]

"""A finished run is replaced only when asked: another framework's or other flags' run into the
same --out-dir is refused until --overwrite, while the same command again just trains again.
In-process, on the small set, from the finished run `torch_finished` (conftest.py).
"""

import json
import shutil

import pytest
from cli_helpers import assert_usage_error
from disk_helpers import litter
from training_helpers import checkpoint_step, train_cli, train_config

from mnist_common.checkpoints import load_checkpoint
from mnist_common.config import FRAMEWORKS, cli_name
from mnist_common.errors import UsageError


def outputs(out_dir):
    return {name: (out_dir / name).read_bytes() for name in ("metrics.json", "model.safetensors",
                                                             "loss.png")}


def copy_of(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


@pytest.mark.data
def test_other_framework_does_not_replace_a_finished_run(torch_finished, small_mnist,
                                                         tmp_path, capsys):
    out_dir = copy_of(torch_finished, tmp_path)
    before = outputs(out_dir)
    code, out, err = train_cli("flax", out_dir, capsys, "--max-steps", 3, epochs=3)
    assert_usage_error(code, err, cli_name("flax"), f"--out-dir {out_dir} holds a finished run of "
                       "python -m torch_impl.train; pass --overwrite to replace it, or choose "
                       "another --out-dir")
    assert out == "" and outputs(out_dir) == before
    assert load_checkpoint(out_dir).progress["framework"] == "torch"
    code, _, err = train_cli("flax", out_dir, capsys, "--max-steps", 3, "--overwrite", epochs=3)
    assert code == 0, err
    assert json.loads((out_dir / "metrics.json").read_text())["framework"] == "flax"
    assert load_checkpoint(out_dir).progress["framework"] == "flax"
    assert litter(out_dir) == []


@pytest.mark.data
@pytest.mark.parametrize("flags, words", [
    (["--max-steps", 4], "made with --max-steps 3, not 4"),
    (["--max-steps", 3, "--epochs", 2], "made with --epochs 3, not 2"),
    (["--max-steps", 3, "--lr", "0.001"], "made with --lr 0.0002, not 0.001"),
    (["--max-steps", 3, "--seed", 1], "made with --seed 0, not 1"),
    (["--max-steps", 3, "--batch-size", 20], "made with --batch-size 16, not 20"),
], ids=["max-steps", "epochs", "lr", "seed", "batch-size"])
def test_other_flags_do_not_replace_a_finished_run(torch_finished, small_mnist, tmp_path, capsys,
                                                   flags, words):
    out_dir = copy_of(torch_finished, tmp_path)
    before = outputs(out_dir)
    code, _, err = train_cli("torch", out_dir, capsys, *flags, epochs=3)
    assert_usage_error(code, err, cli_name("torch"), f"--out-dir {out_dir} holds a finished run "
                       f"{words}; pass --overwrite")
    assert outputs(out_dir) == before


@pytest.mark.data
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_same_command_twice_just_trains_again(framework, small_mnist, tmp_path, capsys):
    out_dir = tmp_path / "run"
    for _ in range(2):
        code, out, err = train_cli(framework, out_dir, capsys, "--max-steps", 2, epochs=3)
        assert code == 0, err
        assert "test accuracy" in out
    assert load_checkpoint(out_dir).progress["global_step"] == 2
    assert litter(out_dir) == []
    # A different --max-steps is another run: refused, then allowed with --overwrite.
    code, _, err = train_cli(framework, out_dir, capsys, "--max-steps", 3, epochs=3)
    assert_usage_error(code, err, cli_name(framework), "made with --max-steps 2, not 3")
    code, _, err = train_cli(framework, out_dir, capsys, "--max-steps", 3, "--overwrite",
                             epochs=3)
    assert code == 0, err
    assert json.loads((out_dir / "metrics.json").read_text())["steps"] == 3


@pytest.mark.data
def test_fresh_run_replaces_a_finished_run_only_when_asked(small_mnist, torch_finished, tmp_path):
    out_dir = tmp_path / "copy"
    shutil.copytree(torch_finished, out_dir)
    with pytest.raises(UsageError, match="made with --max-steps 3, not 2; pass --overwrite"):
        train_config("torch", out_dir, epochs=3, max_steps=2)
    assert checkpoint_step(out_dir) == 3
    train_config("torch", out_dir, epochs=3, max_steps=2, overwrite=True)
    assert checkpoint_step(out_dir) == 2

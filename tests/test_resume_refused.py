"""--resume refused: no checkpoint, a damaged one or one whose manifest misses a file, other
hyper-parameters, a step past the run's end, the other framework. One line, exit status 2, and
nothing changed or added (not even the run's lock file). In-process, on the small set.
"""

import json

import pytest
from checkpoint_writer import arrays
from cli_helpers import TRAIN, assert_usage_error, run_in_process
from training_helpers import checkpoint_step, train_cli, train_config

from mnist_common.checkpoints import save_checkpoint
from mnist_common.config import FRAMEWORKS, Config, cli_name
from mnist_common.errors import UsageError
from torch_impl import train as torch_train

# --- no checkpoint, or a damaged one ------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_resume_without_a_checkpoint_creates_nothing(framework, capsys, tmp_path):
    out_dir = tmp_path / "never-trained"
    code, _, err = run_in_process(TRAIN[framework], ["--resume", "--out-dir", str(out_dir)],
                                  cli_name(framework), capsys)
    assert_usage_error(code, err, cli_name(framework), f"--resume: no checkpoint in {out_dir}")
    assert not out_dir.exists()
    out_dir.mkdir()
    (out_dir / "metrics.json").write_text("{}")  # outputs but no checkpoint
    code, _, err = run_in_process(TRAIN[framework], ["--resume", "--out-dir", str(out_dir)],
                                  cli_name(framework), capsys)
    assert_usage_error(code, err, cli_name(framework), "--resume: no checkpoint in")


def _damaged_checkpoint(out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    directory = save_checkpoint(out_dir, *arrays(3))
    (directory / "optimizer.safetensors").write_bytes(b"\0" * 100)
    return directory


def test_resume_damaged_checkpoint_in_process(capsys, tmp_path):
    directory = _damaged_checkpoint(tmp_path)
    code, _, err = run_in_process(TRAIN["torch"], ["--resume", "--out-dir", str(tmp_path)],
                                  cli_name("torch"), capsys)
    assert_usage_error(code, err, cli_name("torch"), f"--resume: checkpoint {directory} is "
                       "damaged (optimizer.safetensors does not match the SHA-256")


def _flip(path):
    content = bytearray(path.read_bytes())
    content[-5] ^= 0x01  # inside the last array: still a valid safetensors file
    path.write_bytes(bytes(content))


def _manifest(directory, keep):
    path = directory / "progress.json"
    progress = json.loads(path.read_text())
    progress["files"] = {k: v for k, v in progress["files"].items() if k in keep}
    path.write_text(json.dumps(progress))


MANIFESTS = {
    "no files listed, model flipped": ((), "model.safetensors"),
    "no files listed, optimizer flipped": ((), "optimizer.safetensors"),
    "model not listed and flipped": (("optimizer.safetensors",), "model.safetensors"),
    "optimizer not listed and flipped": (("model.safetensors",), "optimizer.safetensors"),
}


@pytest.mark.data
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("keep, flipped", MANIFESTS.values(), ids=MANIFESTS.keys())
def test_resume_refuses_a_manifest_that_misses_a_file(framework, keep, flipped, small_mnist,
                                                      tmp_path, capsys):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    params, optimizer, progress = arrays(3)
    directory = save_checkpoint(out_dir, params, optimizer, {**progress, "framework": framework})
    _manifest(directory, keep)
    _flip(directory / flipped)
    code, out, err = train_cli(framework, out_dir, capsys, "--resume", epochs=3)
    assert_usage_error(code, err, cli_name(framework), f"--resume: checkpoint {directory} is "
                       "damaged (progress.json does not name and hash every file a checkpoint "
                       "needs (model.safetensors, optimizer.safetensors))")
    # Nothing added: not even the lock file, which this refused run created.
    assert out == "" and sorted(p.name for p in out_dir.iterdir()) == ["checkpoints"]
# --- a checkpoint of another run ---------------------------------------------------------------


@pytest.mark.data
@pytest.mark.parametrize("flags, words", [
    ({"batch_size": 32}, "made with --batch-size 16, not 32; resume with --batch-size 16"),
    ({"lr": 1e-3}, "made with --lr 0.0002, not 0.001"),
    ({"seed": 1}, "made with --seed 0, not 1"),
])
def test_resume_with_other_hyper_parameters_is_refused(torch_finished, flags, words):
    before = (torch_finished / "metrics.json").read_bytes()
    config = Config(**{"batch_size": 16, "epochs": 3, "out_dir": str(torch_finished),
                       "progress": False, "resume": True, **flags})
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        torch_train.train_and_evaluate(config)
    assert (torch_finished / "metrics.json").read_bytes() == before
    assert checkpoint_step(torch_finished) == 3


@pytest.mark.data
def test_resume_below_the_checkpoint_is_refused(small_mnist, torch_finished):
    with pytest.raises(UsageError, match="at step 3, past the 2 steps"):
        train_config("torch", torch_finished, epochs=3, max_steps=2, resume=True)


@pytest.mark.data
def test_resume_with_the_other_framework_is_refused(small_mnist, torch_finished):
    with pytest.raises(UsageError, match="written by python -m torch_impl.train"):
        train_config("flax", torch_finished, epochs=3, resume=True)


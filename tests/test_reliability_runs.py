"""Runs and their out-dirs, for both frameworks: nothing finished is replaced by accident, early
errors leave no litter, a damaged checkpoint manifest is refused, signals stop cleanly, and weight
files of other float types are converted (and say so). In-process, on the small set.
"""

import errno
import json
import os
import signal

import numpy as np
import pytest
from checkpoint_writer import arrays
from cli_helpers import assert_usage_error, run_in_process, use_small_mnist
from safetensors.numpy import save_file

from flax_impl import evaluate as flax_evaluate
from flax_impl import train as flax_train
from mnist_common import weights
from mnist_common.checkpoints import LATEST, checkpoint_root, load_checkpoint, save_checkpoint
from mnist_common.config import Config
from mnist_common.data import raw_dir
from mnist_common.errors import UsageError
from mnist_common.weights import CANONICAL_SHAPES
from torch_impl import evaluate as torch_evaluate
from torch_impl import train as torch_train

TRAIN = {"torch": torch_train.main, "flax": flax_train.main}
EVALUATE = {"torch": torch_evaluate.main, "flax": flax_evaluate.main}
FRAMEWORKS = ["torch", "flax"]
SMALL = ["--batch-size", "16", "--epochs", "3", "--no-progress"]  # 7 steps per epoch


def prog(framework, tool="train"):
    return f"python -m {framework}_impl.{tool}"


def train(framework, out_dir, capsys, *flags):
    return run_in_process(TRAIN[framework], [*SMALL, "--out-dir", str(out_dir),
                                             *map(str, flags)], prog(framework), capsys)


def outputs(out_dir):
    return {name: (out_dir / name).read_bytes() for name in ("metrics.json", "model.safetensors",
                                                             "loss.png")}


def temp_litter(out_dir):
    return sorted(p.name for p in out_dir.rglob(".*") if ".tmp" in p.name)


# --- 5: a finished run is not replaced by accident ----------------------------------------------


@pytest.fixture(scope="module")
def torch_finished(tmp_path_factory, real_splits):
    """A finished 3-step torch run on the small set."""
    out_dir = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_small_mnist(monkeypatch, real_splits)
        torch_train.train_and_evaluate(Config(batch_size=16, epochs=3, max_steps=3,
                                              progress=False, out_dir=str(out_dir)))
    return out_dir


def copy_of(run, tmp_path):
    import shutil

    return shutil.copytree(run, tmp_path / "run")


@pytest.mark.data
def test_other_framework_does_not_replace_a_finished_run(torch_finished, small_mnist,
                                                         jax_compile_cache, tmp_path, capsys):
    out_dir = copy_of(torch_finished, tmp_path)
    before = outputs(out_dir)
    code, out, err = train("flax", out_dir, capsys, "--max-steps", 3)
    assert_usage_error(code, err, prog("flax"), f"--out-dir {out_dir} holds a finished run of "
                       "python -m torch_impl.train; pass --overwrite to replace it, or choose "
                       "another --out-dir")
    assert out == "" and outputs(out_dir) == before
    assert load_checkpoint(out_dir).progress["framework"] == "torch"
    code, _, err = train("flax", out_dir, capsys, "--max-steps", 3, "--overwrite")
    assert code == 0, err
    assert json.loads((out_dir / "metrics.json").read_text())["framework"] == "flax"
    assert load_checkpoint(out_dir).progress["framework"] == "flax"
    assert temp_litter(out_dir) == []


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
    code, _, err = train("torch", out_dir, capsys, *flags)
    assert_usage_error(code, err, prog("torch"), f"--out-dir {out_dir} holds a finished run "
                       f"{words}; pass --overwrite")
    assert outputs(out_dir) == before


@pytest.mark.data
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_same_command_twice_just_trains_again(framework, small_mnist, jax_compile_cache,
                                                  tmp_path, capsys):
    out_dir = tmp_path / "run"
    for _ in range(2):
        code, out, err = train(framework, out_dir, capsys, "--max-steps", 2)
        assert code == 0, err
        assert "test accuracy" in out
    assert load_checkpoint(out_dir).progress["global_step"] == 2
    assert temp_litter(out_dir) == []
    # A different --max-steps is another run: refused, then allowed with --overwrite.
    code, _, err = train(framework, out_dir, capsys, "--max-steps", 3)
    assert_usage_error(code, err, prog(framework), "made with --max-steps 2, not 3")
    code, _, err = train(framework, out_dir, capsys, "--max-steps", 3, "--overwrite")
    assert code == 0, err
    assert json.loads((out_dir / "metrics.json").read_text())["steps"] == 3


# --- 6: early errors leave no litter (more such cases: test_bad_input.py) -----------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_data_dir_env_is_a_file(framework, tmp_path, monkeypatch, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    monkeypatch.setenv("MNIST_DATA_DIR", str(target))
    out_dir = tmp_path / "out"
    code, _, err = train(framework, out_dir, capsys)
    assert_usage_error(code, err, prog(framework), f"data dir {target} is not a directory")
    assert target.read_text() == "keep me" and not out_dir.exists()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_offline_without_data_creates_nothing(framework, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_OFFLINE", "1")
    nowhere, out_dir = tmp_path / "nowhere", tmp_path / "out"
    code, _, err = train(framework, out_dir, capsys, "--data-dir", nowhere)
    assert_usage_error(code, err, prog(framework), "MNIST files missing: put",
                       str(raw_dir(nowhere)))
    assert not nowhere.exists() and not out_dir.exists()


# --- 2: a checkpoint manifest that does not cover both array files ------------------------------


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
    code, out, err = train(framework, out_dir, capsys, "--resume")
    assert_usage_error(code, err, prog(framework), f"--resume: checkpoint {directory} is damaged "
                       "(progress.json does not name and hash every file a checkpoint needs "
                       "(model.safetensors, optimizer.safetensors))")
    # Nothing added: not even the lock file, which this refused run created.
    assert out == "" and sorted(p.name for p in out_dir.iterdir()) == ["checkpoints"]


def test_a_manifest_with_a_hash_that_is_not_hex_is_damaged(tmp_path):
    directory = save_checkpoint(tmp_path, *arrays(2))
    path = directory / "progress.json"
    progress = json.loads(path.read_text())
    progress["files"]["model.safetensors"] = "yes"
    path.write_text(json.dumps(progress))
    with pytest.raises(UsageError, match="does not name and hash every file"):
        load_checkpoint(tmp_path)


# --- 7: signals ---------------------------------------------------------------------------------


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


@pytest.mark.data
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_sigterm_saves_a_checkpoint_and_exits_143(framework, small_mnist, jax_compile_cache,
                                                  tmp_path, monkeypatch, capsys):
    signal_at_step(monkeypatch, framework, 10, signal.SIGTERM)
    out_dir = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGTERM)
    code, out, err = train(framework, out_dir, capsys)
    assert code == 143, err
    assert out == "" and "Traceback" not in err
    assert f"{prog(framework)}: SIGTERM after step 10 (epoch 2, batch 3 of 7); checkpoint saved " \
           f"in {checkpoint_root(out_dir)}. Resume with: {prog(framework)} --resume --out-dir " \
           f"{out_dir} --epochs 3 --batch-size 16 --no-progress" in err
    assert load_checkpoint(out_dir).progress["global_step"] == 10
    assert signal.getsignal(signal.SIGTERM) is handler_before
    assert not (out_dir / "metrics.json").exists() and temp_litter(out_dir) == []


@pytest.mark.data
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_second_ctrl_c_quits_at_once_keeping_the_last_checkpoint(
        framework, small_mnist, jax_compile_cache, tmp_path, monkeypatch, capsys):
    # Two Ctrl-C at step 10: the first asks for a stop at the step boundary, the second gets
    # Python's own handler back and quits at once, before the stop writes step 10's checkpoint.
    signal_at_step(monkeypatch, framework, 10, signal.SIGINT, signal.SIGINT)
    out_dir = tmp_path / "run"
    # As in a terminal (a shell's background job would start with SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, out, err = train(framework, out_dir, capsys)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130, err
    assert out == "" and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()][-1] == \
        f"{prog(framework)}: interrupted"
    assert (checkpoint_root(out_dir) / LATEST).read_text() == "step-0000007\n"  # epoch 1's end
    assert load_checkpoint(out_dir).progress["global_step"] == 7
    assert not (out_dir / "metrics.json").exists() and temp_litter(out_dir) == []


# --- 7: an unreadable --weights file; 3: float16 / float64 weights ------------------------------


def _weights(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {k: (0.05 * rng.standard_normal(shape)).astype(dtype)
            for k, shape in CANONICAL_SHAPES.items()}


def evaluate(framework, path, capsys):
    return run_in_process(EVALUATE[framework], ["--weights", str(path), "--no-progress",
                                                "--device", "cpu"], prog(framework, "evaluate"),
                          capsys)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_weights_that_are_a_fifo(framework, tmp_path, capsys):
    """A FIFO would block a reader forever; it is refused before anything opens it."""
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    code, out, err = evaluate(framework, fifo, capsys)
    assert_usage_error(code, err, prog(framework, "evaluate"), f"{fifo}: not a regular file")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_weights_whose_read_fails(framework, tmp_path, monkeypatch, capsys):
    """A read error (EIO; as root, chmod 000 cannot make a file unreadable) is reported in one
    line. This injects the error into the safetensors reader: it tests the reporting, not that
    the operating system raises it."""
    path = tmp_path / "w.safetensors"
    save_file(_weights(), str(path))

    def load_file(filename):
        raise OSError(errno.EIO, os.strerror(errno.EIO), filename)

    monkeypatch.setattr(weights, "load_file", load_file)
    code, out, err = evaluate(framework, path, capsys)
    assert_usage_error(code, err, prog(framework, "evaluate"), f"{path}: not a readable "
                       "safetensors file", "Input/output error")
    assert out == ""


def _torch_pt(path, dtype):
    import torch

    torch.save({k: torch.from_numpy(v).to(dtype) for k, v in _weights().items()}, path)


@pytest.mark.data
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_float16_and_float64_weights_are_converted(framework, dtype, suffix, mnist_root,
                                                   tmp_path, capsys):
    import torch

    reference, path = tmp_path / "ref.safetensors", tmp_path / f"w{suffix}"
    converted = {k: v.astype(dtype).astype(np.float32) for k, v in _weights().items()}
    save_file(converted, str(reference))  # float32 holding exactly the converted values
    if suffix == ".pt":
        _torch_pt(path, getattr(torch, dtype))
    else:
        save_file({k: v.astype(dtype) for k, v in _weights().items()}, str(path))
    code, out, err = evaluate(framework, path, capsys)
    assert code == 0, err
    assert err.splitlines() == [f"{path}: converted {dtype} weights to float32"]
    expected_code, expected_out, _ = evaluate(framework, reference, capsys)
    assert expected_code == 0
    assert out.replace(str(path), "W") == expected_out.replace(str(reference), "W")


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_integer_weights_stay_refused(framework, suffix, tmp_path, capsys):
    path = tmp_path / f"w{suffix}"
    ints = {k: np.zeros(v.shape, np.int32) for k, v in _weights().items()}
    if suffix == ".pt":
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in ints.items()}, path)
    else:
        save_file(ints, str(path))
    code, out, err = evaluate(framework, path, capsys)
    assert_usage_error(code, err, prog(framework, "evaluate"),
                       "layer.0.weight has dtype int32, expected float32")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_float64_beyond_float32_is_refused(framework, tmp_path, capsys):
    path = tmp_path / "w.safetensors"
    big = _weights(np.float64)
    big["fc_layer.2.bias"][0] = 1e300
    save_file(big, str(path))
    code, _, err = evaluate(framework, path, capsys)
    assert_usage_error(code, err, prog(framework, "evaluate"),
                       "fc_layer.2.bias contains NaN or infinite values as float32")


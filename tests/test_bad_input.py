"""Bad input: one line on stderr (`prog: error: ...`), exit status 2, no traceback, nothing lost.

In-process cases call each CLI's `main` through `run_cli`, exactly what `python -m` runs; the
`SUBPROCESS` cases run the real commands side by side, so that what a user sees is checked too.
"""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import (
    REPO,
    assert_usage_error,
    cli_env,
    finish,
    run_in_process,
    start_cli,
)
from safetensors.numpy import save_file

from flax_impl import evaluate as flax_evaluate
from flax_impl import train as flax_train
from mnist_common.checkpoints import save_checkpoint
from mnist_common.data import MNIST_FILES, raw_dir
from mnist_common.weights import CANONICAL_SHAPES
from torch_impl import evaluate as torch_evaluate
from torch_impl import train as torch_train

TRAIN = {"torch": torch_train.main, "flax": flax_train.main}
EVALUATE = {"torch": torch_evaluate.main, "flax": flax_evaluate.main}


def train_prog(framework):
    return f"python -m {framework}_impl.train"


def evaluate_prog(framework):
    return f"python -m {framework}_impl.evaluate"


# --- flags --------------------------------------------------------------------------------------

BAD_FLAGS = {
    "batch size 0": (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    "batch size negative": (["--batch-size", "-5"], "must be at least 1, got -5"),
    "batch size not a number": (["--batch-size", "many"], "expected a whole number, got 'many'"),
    "batch size fractional": (["--batch-size", "1.5"], "expected a whole number, got '1.5'"),
    "epochs not a number": (["--epochs", "ten"], "argument --epochs: expected a whole number, "
                                                 "got 'ten'"),
    "lr not a number": (["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
    "seed not a number": (["--seed", "abc"], "argument --seed: expected a whole number, "
                                             "got 'abc'"),
    "max steps not a number": (["--max-steps", "5x"], "argument --max-steps: expected a whole "
                                                      "number, got '5x'"),
    "epochs 0": (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    "epochs negative": (["--epochs", "-2"], "argument --epochs: must be at least 1, got -2"),
    "lr 0": (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    "lr negative": (["--lr", "-0.001"], "must be a finite number > 0, got -0.001"),
    "lr nan": (["--lr", "nan"], "must be a finite number > 0, got nan"),
    "lr inf": (["--lr", "inf"], "must be a finite number > 0, got inf"),
    "lr -inf": (["--lr=-inf"], "must be a finite number > 0, got -inf"),
    "unknown device": (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    "unknown loader": (["--loader", "fast"], "argument --loader: invalid choice: 'fast'"),
    "max steps 0": (["--max-steps", "0"], "argument --max-steps: must be at least 1, got 0"),
    "seed negative": (["--seed", "-1"], "argument --seed: must be in [0, 2**32), got -1"),
    "seed too big": (["--seed", str(2**32)], "must be in [0, 2**32)"),
    "unknown flag": (["--learning-rate", "1"], "unrecognized arguments: --learning-rate"),
}


@pytest.mark.parametrize("framework", ["torch", "flax"])
@pytest.mark.parametrize("argv, words", BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_bad_flag(framework, argv, words, capsys, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = run_in_process(TRAIN[framework], [*argv, "--out-dir", str(out_dir)],
                                    train_prog(framework), capsys)
    assert_usage_error(code, err, train_prog(framework), words, "(see --help)")
    assert out == "" and not out_dir.exists()


@pytest.mark.parametrize("framework", ["torch", "flax"])
@pytest.mark.parametrize("device", ["cuda", "gpu"])
def test_absent_gpu(framework, device, capsys, tmp_path):
    if (framework == "torch" and torch.cuda.is_available()) or (
            framework == "flax" and __import__("jax").default_backend() != "cpu"):
        pytest.skip("a GPU is present")
    out_dir = tmp_path / "out"
    code, _, err = run_in_process(TRAIN[framework], ["--device", device, "--out-dir",
                                                     str(out_dir)], train_prog(framework), capsys)
    assert_usage_error(code, err, train_prog(framework), f"--device {device}: no ")
    assert not out_dir.exists()
    save_file(_weights(), str(tmp_path / "w.safetensors"))
    code, _, err = run_in_process(EVALUATE[framework], ["--device", device, "--weights",
                                                        str(tmp_path / "w.safetensors")],
                                  evaluate_prog(framework), capsys)
    assert_usage_error(code, err, evaluate_prog(framework), f"--device {device}: no ")


@pytest.mark.data
@pytest.mark.parametrize("framework", ["torch", "flax"])
def test_batch_larger_than_the_training_set(framework, mnist_root, capsys, tmp_path):
    code, _, err = run_in_process(
        TRAIN[framework], ["--batch-size", "60001", "--out-dir", str(tmp_path / "out"),
                           "--no-progress"], train_prog(framework), capsys)
    assert_usage_error(code, err, train_prog(framework),
                       "--batch-size 60001 is larger than the training set (60000 images)")
    assert not (tmp_path / "out").exists()


# --- output directory ---------------------------------------------------------------------------


@pytest.mark.parametrize("framework", ["torch", "flax"])
def test_out_dir_is_a_file(framework, capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    code, _, err = run_in_process(TRAIN[framework], ["--out-dir", str(target)],
                                  train_prog(framework), capsys)
    assert_usage_error(code, err, train_prog(framework), f"--out-dir {target}: exists and is "
                                                         "not a directory")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("framework", ["torch", "flax"])
def test_out_dir_below_a_file(framework, capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    code, _, err = run_in_process(TRAIN[framework], ["--out-dir", str(target / "run")],
                                  train_prog(framework), capsys)
    assert_usage_error(code, err, train_prog(framework), "a parent of it is not a directory")
    assert target.read_text() == "keep me"


# --- data ---------------------------------------------------------------------------------------


def _data_dir_with(tmp_path, mnist_root, name, damage):
    """A data dir whose files link to the real ones, except `name`, a damaged copy."""
    raw = raw_dir(tmp_path / "data")
    raw.mkdir(parents=True)
    for expected in MNIST_FILES:
        source = raw_dir(mnist_root) / expected.name
        if expected.name == name:
            (raw / name).write_bytes(damage(source.read_bytes()))
        else:
            (raw / expected.name).symlink_to(source)
    return tmp_path / "data", raw / name


def _flip_label(content):
    content = bytearray(content)
    content[100] = (content[100] + 1) % 10
    return bytes(content)


DAMAGED_DATA = {
    "wrong magic": ("t10k-labels-idx1-ubyte", lambda c: b"\x00\x00\x08\x03" + c[4:],
                    "has the wrong magic number 0x00000803 (expected 0x00000801)"),
    "truncated": ("train-labels-idx1-ubyte", lambda c: c[:30_000],
                  "is truncated (30,000 of 60,008 bytes)"),
    "hash mismatch": ("t10k-labels-idx1-ubyte", _flip_label, "has the wrong SHA-256"),
    "gzip-compressed": ("t10k-labels-idx1-ubyte", lambda c: b"\x1f\x8b" + c[2:],
                        "is still gzip-compressed"),
    "empty file": ("t10k-images-idx3-ubyte", lambda c: b"", "is truncated (0 of 7,840,016"),
}


@pytest.mark.data
@pytest.mark.parametrize("name, damage, words", DAMAGED_DATA.values(), ids=DAMAGED_DATA.keys())
def test_damaged_mnist_file(name, damage, words, mnist_root, capsys, tmp_path):
    data_dir, damaged = _data_dir_with(tmp_path, mnist_root, name, damage)
    before = damaged.read_bytes()
    out_dir = tmp_path / "out"
    code, _, err = run_in_process(
        torch_train.main, ["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--max-steps",
                           "1", "--no-progress"], train_prog("torch"), capsys)
    assert_usage_error(code, err, train_prog("torch"), str(damaged), words)
    assert damaged.read_bytes() == before  # reported, never "repaired" or deleted
    assert not out_dir.exists()  # data is checked before the out-dir is created: no litter


@pytest.mark.parametrize("framework", ["torch", "flax"])
def test_no_data_and_no_source(framework, capsys, tmp_path, monkeypatch):
    """MNIST_OFFLINE=1: no network source is tried; a missing data dir is not created."""
    monkeypatch.setenv("MNIST_OFFLINE", "1")
    nowhere = tmp_path / "nowhere"
    save_file(_weights(), str(tmp_path / "w.safetensors"))
    code, _, err = run_in_process(
        EVALUATE[framework], ["--data-dir", str(nowhere), "--weights",
                              str(tmp_path / "w.safetensors"), "--device", "cpu"],
        evaluate_prog(framework), capsys)
    assert_usage_error(code, err, evaluate_prog(framework), "MNIST files missing: put",
                       str(raw_dir(nowhere)))
    assert not nowhere.exists()


@pytest.mark.parametrize("framework", ["torch", "flax"])
def test_data_dir_is_a_file(framework, capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    code, _, err = run_in_process(
        TRAIN[framework], ["--data-dir", str(target), "--out-dir", str(tmp_path / "out")],
        train_prog(framework), capsys)
    assert_usage_error(code, err, train_prog(framework), f"data dir {target} is not a directory")
    assert target.read_text() == "keep me"
    assert not (tmp_path / "out").exists()


# --- weight files -------------------------------------------------------------------------------


def _weights():
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(shape).astype(np.float32)
            for k, shape in CANONICAL_SHAPES.items()}


class _RunsCode:
    """A pickle payload that would create `marker` if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _evil_pt(path, marker):
    state = {k: torch.from_numpy(v) for k, v in _weights().items()}
    state["layer.0.bias"] = _RunsCode(marker)
    torch.save(state, path)


def _write_safetensors(path, change):
    weights = _weights()
    change(weights)
    save_file(weights, str(path))


def _bf16(path):
    from safetensors.torch import save_file as save_torch

    save_torch({k: torch.from_numpy(v).bfloat16() for k, v in _weights().items()}, str(path))


def _nan(weights):
    weights["fc_layer.0.weight"][5, 5] = np.nan


WEIGHT_FILES = {
    "missing": ("gone.safetensors", None, "gone.safetensors: no such file"),
    "a directory": ("adir.safetensors", lambda p: p.mkdir(), "is a directory, not a weight file"),
    "unknown suffix": ("weights.npz", lambda p: np.savez(p, a=1),
                       "unknown weight format '.npz'"),
    "garbage safetensors": ("junk.safetensors", lambda p: p.write_bytes(os.urandom(4000)),
                            "not a readable safetensors file"),
    "empty safetensors": ("empty.safetensors", lambda p: p.write_bytes(b""),
                          "not a readable safetensors file"),
    "garbage pt": ("junk.pt", lambda p: p.write_bytes(b"hello world" * 20),
                   "not a readable PyTorch .pt file"),
    "empty pt": ("empty.pt", lambda p: p.write_bytes(b""), "not a readable PyTorch .pt file"),
    "wrong shapes": ("shapes.safetensors", lambda p: _write_safetensors(
        p, lambda w: w.update({"fc_layer.2.weight": np.zeros((10, 99), np.float32)})),
        "fc_layer.2.weight has shape (10, 99), expected (10, 100)"),
    "missing key": ("keys.safetensors", lambda p: _write_safetensors(
        p, lambda w: w.pop("layer.5.bias")), "missing keys: ['layer.5.bias']"),
    "extra key": ("extra.safetensors", lambda p: _write_safetensors(
        p, lambda w: w.update({"layer.9.weight": np.zeros(3, np.float32)})),
        "unexpected keys: ['layer.9.weight']"),
    "flax-style names": ("flax.safetensors", lambda p: save_file(
        {k.replace(".", "_"): v for k, v in _weights().items()}, str(p)),
        "not this model's weights"),
    "integer weights": ("int.safetensors", lambda p: _write_safetensors(
        p, lambda w: w.update({"layer.0.bias": np.zeros(16, np.int32)})),
        "layer.0.bias has dtype int32, expected float32"),
    # "dtype bfloat16" once JAX has taught NumPy the type, else "data type 'bfloat16'".
    "bfloat16": ("bf16.safetensors", _bf16, "bfloat16"),
    "NaN weights": ("nan.safetensors", lambda p: _write_safetensors(p, _nan),
                    "fc_layer.0.weight contains NaN or infinite values"),
    "pt of a list": ("list.pt", lambda p: torch.save([torch.zeros(2)], p),
                     "expected a state_dict (a dict of tensors), found list"),
    "pt of a whole model": ("model.pt", lambda p: torch.save(torch.nn.Linear(2, 2), p),
                            "refused: not a plain state_dict of tensors"),
    "pt that runs code": ("evil.pt", lambda p: _evil_pt(p, p.parent / "code-ran"),
                          "which blocks code (it asks for "),
}


@pytest.mark.parametrize("framework", ["torch", "flax"])
@pytest.mark.parametrize("name, make, words", WEIGHT_FILES.values(), ids=WEIGHT_FILES.keys())
def test_bad_weight_file(framework, name, make, words, capsys, tmp_path):
    path = tmp_path / name
    if make is not None:
        make(path)
    out = tmp_path / "metrics.json"
    code, stdout, err = run_in_process(
        EVALUATE[framework], ["--weights", str(path), "--out", str(out), "--device", "cpu"],
        evaluate_prog(framework), capsys)
    assert_usage_error(code, err, evaluate_prog(framework), str(path), words)
    assert stdout == "" and not out.exists()
    assert not (tmp_path / "code-ran").exists()


def test_evaluate_out_is_a_directory(capsys, tmp_path):
    code, _, err = run_in_process(
        torch_evaluate.main, ["--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path)],
        evaluate_prog("torch"), capsys)
    assert_usage_error(code, err, evaluate_prog("torch"), f"--out {tmp_path}: is a directory")


# --- --resume -----------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", ["torch", "flax"])
def test_resume_without_a_checkpoint_creates_nothing(framework, capsys, tmp_path):
    out_dir = tmp_path / "never-trained"
    code, _, err = run_in_process(TRAIN[framework], ["--resume", "--out-dir", str(out_dir)],
                                  train_prog(framework), capsys)
    assert_usage_error(code, err, train_prog(framework), f"--resume: no checkpoint in {out_dir}")
    assert not out_dir.exists()
    out_dir.mkdir()
    (out_dir / "metrics.json").write_text("{}")  # outputs but no checkpoint
    code, _, err = run_in_process(TRAIN[framework], ["--resume", "--out-dir", str(out_dir)],
                                  train_prog(framework), capsys)
    assert_usage_error(code, err, train_prog(framework), "--resume: no checkpoint in")


def _damaged_checkpoint(out_dir):
    from checkpoint_writer import arrays

    out_dir.mkdir(parents=True, exist_ok=True)
    directory = save_checkpoint(out_dir, *arrays(3))
    (directory / "optimizer.safetensors").write_bytes(b"\0" * 100)
    return directory


def test_resume_damaged_checkpoint_in_process(capsys, tmp_path):
    directory = _damaged_checkpoint(tmp_path)
    code, _, err = run_in_process(torch_train.main, ["--resume", "--out-dir", str(tmp_path)],
                                  train_prog("torch"), capsys)
    assert_usage_error(code, err, train_prog("torch"), f"--resume: checkpoint {directory} is "
                       "damaged (optimizer.safetensors does not match the SHA-256")


# --- the real commands --------------------------------------------------------------------------


def _unprivileged():
    """A command prefix under which write permission bits are enforced, or None."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    drop = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"] if setpriv else None
    if drop is None or subprocess.run([*drop, "true"], capture_output=True).returncode != 0:
        return None
    return drop


def _start_unprivileged(prefix, module, *args, env=None):
    return subprocess.Popen([*prefix, sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                            env=env or cli_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def subprocess_cases(tmp_path_factory, mnist_root):
    """Every real-command case, started side by side; {name: (CompletedProcess, context)}."""
    base = tmp_path_factory.mktemp("bad-input")
    cases = {}  # everything is set up first, then all commands start at once

    def case(name, module, *args, env=None, context=None, prefix=None):
        cases[name] = (prefix, module, args, env, context)

    case("flag", "torch_impl.train", "--epochs", "0")


    magic = base / "magic"
    data_dir, damaged = _data_dir_with(magic, mnist_root, "t10k-labels-idx1-ubyte",
                                       lambda c: b"\x00\x00\x08\x03" + c[4:])
    case("wrong magic", "flax_impl.train", "--data-dir", data_dir, "--out-dir", magic / "out",
         "--no-progress", context=damaged)


    marker = base / "code-ran"
    _evil_pt(base / "evil.pt", marker)
    case("evil pt", "torch_impl.evaluate", "--weights", base / "evil.pt", context=marker)


    prefix = _unprivileged()
    if prefix is not None:
        locked = base / "read-only"
        locked.mkdir()
        locked.chmod(0o555)
        case("out dir not writable", "torch_impl.train", "--out-dir", locked,
             prefix=prefix, context=locked)
        case("data dir not writable", "torch_impl.train", "--data-dir", locked, "--out-dir",
             base / "ro-data-out", "--no-progress", prefix=prefix, context=locked)
    started = {}
    for name, (case_prefix, module, args, env, context) in cases.items():
        if case_prefix is None:
            started[name] = (start_cli(module, *args, env=env), context)
        else:
            started[name] = (_start_unprivileged(case_prefix, module, *args, env=env), context)
    results = {name: (finish(process, timeout=240), context)
               for name, (process, context) in started.items()}
    return results, prefix


SUBPROCESS = {
    "flag": ("torch", "argument --epochs: must be at least 1, got 0"),
    "wrong magic": ("flax", "has the wrong magic number"),
    "evil pt": ("torch", "refused: not a plain state_dict of tensors"),
    "out dir not writable": ("torch", "not writable (Permission denied)"),
    "data dir not writable": ("torch", "cannot write the MNIST files into"),
}


@pytest.mark.data
@pytest.mark.parametrize("name", SUBPROCESS.keys())
def test_real_command(subprocess_cases, name):
    results, prefix = subprocess_cases
    if name.endswith("not writable") and prefix is None:
        pytest.skip("running as root and setpriv cannot drop CAP_DAC_OVERRIDE here: root "
                    "writes anywhere, so an unwritable directory cannot be made")
    done, context = results[name]
    framework, words = SUBPROCESS[name]
    module = done.args[done.args.index("-m") + 1]
    assert_usage_error(done.returncode, done.stderr, f"python -m {module}", words)
    assert done.stdout == ""
    if name == "wrong magic":
        assert context.read_bytes()[:4] == b"\x00\x00\x08\x03"
    elif name.endswith("evil pt"):
        assert not context.exists(), "unpickling ran the payload"
    elif name.endswith("not writable"):
        assert list(context.iterdir()) == []


def test_evil_pickle_payload_really_is_code(tmp_path):
    """The payload the tests refuse does run when unpickled without weights_only."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_RunsCode(marker)))
    assert marker.exists()

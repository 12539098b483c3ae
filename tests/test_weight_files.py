"""Weight files given to the evaluation CLIs: every kind of bad file refused in one line (exit
status 2, nothing written, no pickled code run), an unreadable or blocking file reported before
it is read, float16 and float64 weights converted (and said so), integers refused.
In-process, through each CLI's `main`.
"""

import errno
import os
import pickle

import numpy as np
import pytest
import torch
from cli_helpers import EVALUATE, assert_usage_error, run_in_process
from safetensors.numpy import save_file
from weight_helpers import RunsCode, evil_pt, random_weights

from mnist_common import weights
from mnist_common.config import FRAMEWORKS, cli_name


def _write_safetensors(path, change):
    weights = random_weights()
    change(weights)
    save_file(weights, str(path))


def _bf16(path):
    from safetensors.torch import save_file as save_torch

    save_torch({k: torch.from_numpy(v).bfloat16() for k, v in random_weights().items()}, str(path))


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
        {k.replace(".", "_"): v for k, v in random_weights().items()}, str(p)),
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
    "pt that runs code": ("evil.pt", lambda p: evil_pt(p, p.parent / "code-ran"),
                          "which blocks code (it asks for "),
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name, make, words", WEIGHT_FILES.values(), ids=WEIGHT_FILES.keys())
def test_bad_weight_file(framework, name, make, words, capsys, tmp_path):
    path = tmp_path / name
    if make is not None:
        make(path)
    out = tmp_path / "metrics.json"
    code, stdout, err = run_in_process(
        EVALUATE[framework], ["--weights", str(path), "--out", str(out), "--device", "cpu"],
        cli_name(framework, "evaluate"), capsys)
    assert_usage_error(code, err, cli_name(framework, "evaluate"), str(path), words)
    assert stdout == "" and not out.exists()
    assert not (tmp_path / "code-ran").exists()


def evaluate(framework, path, capsys):
    return run_in_process(EVALUATE[framework], ["--weights", str(path), "--no-progress",
                                                "--device", "cpu"], cli_name(framework, "evaluate"),
                          capsys)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_weights_that_are_a_fifo(framework, tmp_path, capsys):
    """A FIFO would block a reader forever; it is refused before anything opens it."""
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    code, out, err = evaluate(framework, fifo, capsys)
    assert_usage_error(code, err, cli_name(framework, "evaluate"), f"{fifo}: not a regular file")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_weights_whose_read_fails(framework, tmp_path, monkeypatch, capsys):
    """A read error (EIO; as root, chmod 000 cannot make a file unreadable) is reported in one
    line. This injects the error into the safetensors reader: it tests the reporting, not that
    the operating system raises it."""
    path = tmp_path / "w.safetensors"
    save_file(random_weights(), str(path))

    def load_file(filename):
        raise OSError(errno.EIO, os.strerror(errno.EIO), filename)

    monkeypatch.setattr(weights, "load_file", load_file)
    code, out, err = evaluate(framework, path, capsys)
    assert_usage_error(code, err, cli_name(framework, "evaluate"), f"{path}: not a readable "
                       "safetensors file", "Input/output error")
    assert out == ""


def _torch_pt(path, dtype):
    torch.save({k: torch.from_numpy(v).to(dtype) for k, v in random_weights().items()}, path)


@pytest.mark.data
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_float16_and_float64_weights_are_converted(framework, dtype, suffix, mnist_root,
                                                   tmp_path, capsys):
    reference, path = tmp_path / "ref.safetensors", tmp_path / f"w{suffix}"
    converted = {k: v.astype(dtype).astype(np.float32) for k, v in random_weights().items()}
    save_file(converted, str(reference))  # float32 holding exactly the converted values
    if suffix == ".pt":
        _torch_pt(path, getattr(torch, dtype))
    else:
        save_file({k: v.astype(dtype) for k, v in random_weights().items()}, str(path))
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
    ints = {k: np.zeros(v.shape, np.int32) for k, v in random_weights().items()}
    if suffix == ".pt":
        torch.save({k: torch.from_numpy(v) for k, v in ints.items()}, path)
    else:
        save_file(ints, str(path))
    code, out, err = evaluate(framework, path, capsys)
    assert_usage_error(code, err, cli_name(framework, "evaluate"),
                       "layer.0.weight has dtype int32, expected float32")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_float64_beyond_float32_is_refused(framework, tmp_path, capsys):
    path = tmp_path / "w.safetensors"
    big = random_weights(np.float64)
    big["fc_layer.2.bias"][0] = 1e300
    save_file(big, str(path))
    code, _, err = evaluate(framework, path, capsys)
    assert_usage_error(code, err, cli_name(framework, "evaluate"),
                       "fc_layer.2.bias contains NaN or infinite values as float32")


def test_evil_pickle_payload_really_is_code(tmp_path):
    """The payload the tests refuse does run when unpickled without weights_only."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(RunsCode(marker)))
    assert marker.exists()

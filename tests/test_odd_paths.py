"""Paths no encoding or terminal expects: non-ASCII names where stdout encodes only ASCII, bytes
that are not UTF-8, a newline or an escape sequence in a name. Every byte survives (shown as
`\\xe9`), every error stays one line with its reason, `--out` is written before anything is
printed. And a `.train.lock` that is a symbolic link is refused, never followed nor deleted.
"""

import io
import json
import os
import sys

import pytest
from cli_helpers import (
    EVALUATE,
    TRAIN,
    assert_usage_error,
    cli_env,
    run_cli_subprocess,
    run_in_process,
)
from data_helpers import MANIFEST, good_source

from mnist_common.config import FRAMEWORKS, cli_name
from mnist_common.data import LOCK_NAME, MNIST_FILES, prepare_data, raw_dir
from mnist_common.errors import UsageError, run_cli

NOT_UTF8 = os.fsdecode(b"mod\xe8le")  # the name as Python holds it: a surrogate escape
# (a name, stdout's encoding): both once printed show the one byte as \xe8
PRINTED_NAMES = {"non-ASCII, ASCII stdout": ("modèle", "ascii"),
                 "not UTF-8, UTF-8 stdout": (NOT_UTF8, "utf-8")}


def text_stream(encoding):
    """A stdout as Python makes one for PYTHONIOENCODING=`encoding` (errors: strict)."""
    return io.TextIOWrapper(io.BytesIO(), encoding=encoding, newline="\n")


def printed(stream):
    stream.flush()
    return stream.buffer.getvalue().decode("ascii")


@pytest.mark.data
@pytest.mark.parametrize("name", [b"d\xc3\xa9", b"d\xe9"], ids=["non-ASCII", "not UTF-8"])
def test_data_cli_prints_any_data_root_in_ascii(name, tmp_path, mnist_root):
    root = os.path.join(os.fsencode(tmp_path), name)
    raw = raw_dir(os.fsdecode(root))
    raw.mkdir(parents=True)
    for f in MNIST_FILES:
        (raw / f.name).symlink_to(raw_dir(mnist_root) / f.name)
    done = run_cli_subprocess("mnist_common.data", "--data-dir", os.fsdecode(root),
                              "--no-progress", env=cli_env(PYTHONIOENCODING="ascii",
                                                           MNIST_OFFLINE="1"), timeout=120)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout == f"{tmp_path}/d\\xe9\n"


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", PRINTED_NAMES)
def test_evaluate_prints_any_weights_path_and_writes_out(framework, case, weights_file,
                                                         small_mnist, tmp_path, monkeypatch):
    name, encoding = PRINTED_NAMES[case]
    folder = tmp_path / name
    folder.mkdir()
    weights = folder / "m.safetensors"
    weights.write_bytes(weights_file.read_bytes())
    out = folder / "x.json"
    monkeypatch.setattr(sys, "stdout", text_stream(encoding))
    run_cli(EVALUATE[framework], ["--weights", str(weights), "--out", str(out),
                                  "--device", "cpu", "--no-progress"],
            cli_name(framework, "evaluate"))
    assert printed(sys.stdout).startswith(f"{framework}: {tmp_path}/mod\\xe8le/m.safetensors: "
                                          f"test accuracy ")
    assert json.loads(out.read_text())["weights"] == str(weights)


class ClosedStdout(io.StringIO):
    """A stdout whose reader has gone (`... | head -0`)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_evaluate_writes_out_before_it_prints(weights_file, small_mnist, tmp_path, monkeypatch):
    out = tmp_path / "x.json"
    monkeypatch.setattr(sys, "stdout", ClosedStdout())
    with pytest.raises(BrokenPipeError):
        EVALUATE["torch"](["--weights", str(weights_file), "--out", str(out), "--device", "cpu",
                           "--no-progress"])
    assert json.loads(out.read_text())["test_examples"] == 200


# A path's characters that would end the line or reach the terminal raw, as a message shows them.
ODD_NAMES = {"newline": ("none\nsecond.safetensors", "none\\nsecond.safetensors"),
             "escape sequence": ("\x1b[31mred.safetensors", "\\x1b[31mred.safetensors"),
             "not UTF-8": (os.fsdecode(b"\xff.safetensors"), "\\xff.safetensors")}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", ODD_NAMES)
def test_an_odd_weights_path_is_one_escaped_line(framework, case, tmp_path, capsys):
    name, shown = ODD_NAMES[case]
    code, out, err = run_in_process(EVALUATE[framework], ["--weights", str(tmp_path / name)],
                                    cli_name(framework, "evaluate"), capsys)
    assert_usage_error(code, err, cli_name(framework, "evaluate"),
                       f"{tmp_path}/{shown}: no such file")
    assert err.isascii() and err[:-1].isprintable() and out == ""


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_odd_out_dir_is_one_escaped_line(framework, tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    out_dir = tmp_path / "file" / "a\nb\x1b[0m"
    code, _, err = run_in_process(TRAIN[framework], ["--out-dir", str(out_dir)],
                                  cli_name(framework), capsys)
    assert_usage_error(code, err, cli_name(framework),
                       f"{tmp_path}/file/a\\nb\\x1b[0m: a parent of it is not a directory")


def test_an_odd_data_dir_is_one_escaped_line(tmp_path, capsys, monkeypatch):
    from mnist_common.data.__main__ import _main
    from mnist_common.data.idx import PROG

    monkeypatch.setenv("MNIST_OFFLINE", "1")
    code, _, err = run_in_process(_main, ["--data-dir", str(tmp_path / "x\ny"), "--no-progress"],
                                  PROG, capsys)
    assert_usage_error(code, err, PROG, "MNIST files missing",
                       f"{tmp_path}/x\\ny/MNIST/raw/")


# --- a lock that is a link ----------------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_lock_that_is_a_dangling_link_is_refused_and_kept(framework, small_mnist, tmp_path,
                                                            capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "lock"  # where a file could be made
    (out_dir / ".train.lock").symlink_to(target)
    code, out, err = run_in_process(TRAIN[framework], ["--batch-size", "16", "--max-steps", "1",
                                                       "--no-progress", "--out-dir",
                                                       str(out_dir)], cli_name(framework), capsys)
    assert_usage_error(code, err, cli_name(framework),
                       f"{out_dir}/.train.lock is a symbolic link", "remove it")
    assert os.readlink(out_dir / ".train.lock") == str(target)
    assert os.listdir(elsewhere) == [] and os.listdir(out_dir) == [".train.lock"]


def test_a_data_lock_that_is_a_dangling_link_is_refused_and_kept(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "data"
    root.mkdir()
    (root / LOCK_NAME).symlink_to(elsewhere / "lock")
    with pytest.raises(UsageError, match=f"{LOCK_NAME} is a symbolic link"):
        prepare_data(root, files=MANIFEST, sources=[good_source])
    assert os.readlink(root / LOCK_NAME) == str(elsewhere / "lock")
    assert os.listdir(elsewhere) == []

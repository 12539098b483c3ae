"""MNIST files a CLI cannot use: damaged or missing files, a dangling link, a data dir that is a
file (flag or MNIST_DATA_DIR) or too long a path. One line on stderr, exit status 2, the files
reported and never changed, and no out-dir created. In-process, through each CLI's `main`.
"""

import pytest
from cli_helpers import EVALUATE, TRAIN, assert_usage_error, run_in_process
from data_helpers import data_dir_with
from safetensors.numpy import save_file
from training_helpers import train_cli
from weight_helpers import random_weights

from mnist_common.config import FRAMEWORKS, cli_name
from mnist_common.data import MNIST_FILES, PROG, raw_dir
from mnist_common.data import __main__ as data_cli

LONG = "x" * 300  # one path component longer than any file system allows (255 bytes)

# --- the files ----------------------------------------------------------------------------------


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
    data_dir, damaged = data_dir_with(tmp_path, mnist_root, name, damage)
    before = damaged.read_bytes()
    out_dir = tmp_path / "out"
    code, _, err = run_in_process(
        TRAIN["torch"], ["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--max-steps",
                         "1", "--no-progress"], cli_name("torch"), capsys)
    assert_usage_error(code, err, cli_name("torch"), str(damaged), words)
    assert damaged.read_bytes() == before  # reported, never "repaired" or deleted
    assert not out_dir.exists()  # data is checked before the out-dir is created: no litter


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_no_data_and_no_source(framework, capsys, tmp_path, monkeypatch):
    """MNIST_OFFLINE=1: no network source is tried; a missing data dir is not created."""
    monkeypatch.setenv("MNIST_OFFLINE", "1")
    nowhere = tmp_path / "nowhere"
    save_file(random_weights(), str(tmp_path / "w.safetensors"))
    code, _, err = run_in_process(
        EVALUATE[framework], ["--data-dir", str(nowhere), "--weights",
                              str(tmp_path / "w.safetensors"), "--device", "cpu"],
        cli_name(framework, "evaluate"), capsys)
    assert_usage_error(code, err, cli_name(framework, "evaluate"), "MNIST files missing: put",
                       str(raw_dir(nowhere)))
    assert not nowhere.exists()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_data_dir_is_a_file(framework, capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    code, _, err = run_in_process(
        TRAIN[framework], ["--data-dir", str(target), "--out-dir", str(tmp_path / "out")],
        cli_name(framework), capsys)
    assert_usage_error(code, err, cli_name(framework), f"data dir {target} is not a directory")
    assert target.read_text() == "keep me"
    assert not (tmp_path / "out").exists()



@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_data_dir_env_is_a_file(framework, tmp_path, monkeypatch, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    monkeypatch.setenv("MNIST_DATA_DIR", str(target))
    out_dir = tmp_path / "out"
    code, _, err = train_cli(framework, out_dir, capsys, epochs=3)
    assert_usage_error(code, err, cli_name(framework), f"data dir {target} is not a directory")
    assert target.read_text() == "keep me" and not out_dir.exists()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_offline_without_data_creates_nothing(framework, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_OFFLINE", "1")
    nowhere, out_dir = tmp_path / "nowhere", tmp_path / "out"
    code, _, err = train_cli(framework, out_dir, capsys, "--data-dir", nowhere, epochs=3)
    assert_usage_error(code, err, cli_name(framework), "MNIST files missing: put",
                       str(raw_dir(nowhere)))
    assert not nowhere.exists() and not out_dir.exists()


def test_an_over_long_data_dir_is_one_line(tmp_path, capsys):
    code, _, err = run_in_process(data_cli.main, ["--data-dir", str(tmp_path / LONG)],
                                  PROG, capsys)
    assert_usage_error(code, err, PROG, "--data-dir", "File name too long")
    code, _, err = run_in_process(TRAIN["torch"], ["--data-dir", str(tmp_path / LONG)],
                                  cli_name("torch"), capsys)
    assert_usage_error(code, err, cli_name("torch"), "--data-dir", "File name too long")



@pytest.mark.data
def test_a_dangling_link_in_the_data_folder_is_named(mnist_root, tmp_path, capsys):
    raw = raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for f in MNIST_FILES:
        (raw / f.name).symlink_to(raw_dir(mnist_root) / f.name)
    dangling = raw / MNIST_FILES[1].name
    dangling.unlink()
    dangling.symlink_to(tmp_path / "gone")
    expected = (f"MNIST file {dangling} is a symbolic link to {tmp_path / 'gone'}, which does "
                "not exist; remove the link or point it at the official file")
    code, _, err = run_in_process(data_cli.main, ["--data-dir", str(tmp_path)], PROG,
                                  capsys)
    assert_usage_error(code, err, PROG, expected)
    code, _, err = run_in_process(TRAIN["torch"], ["--data-dir", str(tmp_path), "--out-dir",
                                                   str(tmp_path / "run")], cli_name("torch"),
                                  capsys)
    assert_usage_error(code, err, cli_name("torch"), expected)
    assert not (tmp_path / "run").exists()



"""Paths a CLI cannot use for its outputs: an --out-dir that is a file or below one, an --out or
--weights that is a directory, paths too long for the file system. One line on stderr, exit
status 2, and nothing created. In-process, through each CLI's `main`.
"""

import pytest
from cli_helpers import EVALUATE, TRAIN, assert_usage_error, run_in_process

from mnist_common.config import FRAMEWORKS, cli_name

LONG = "x" * 300  # one path component longer than any file system allows (255 bytes)

# --- output directory ---------------------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_out_dir_is_a_file(framework, capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    code, _, err = run_in_process(TRAIN[framework], ["--out-dir", str(target)],
                                  cli_name(framework), capsys)
    assert_usage_error(code, err, cli_name(framework), f"--out-dir {target}: exists and is "
                                                         "not a directory")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_out_dir_below_a_file(framework, capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    code, _, err = run_in_process(TRAIN[framework], ["--out-dir", str(target / "run")],
                                  cli_name(framework), capsys)
    assert_usage_error(code, err, cli_name(framework), "a parent of it is not a directory")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_over_long_out_dir_is_one_line_and_creates_nothing(framework, tmp_path, capsys):
    for out_dir in (tmp_path / "new" / "a" / LONG, tmp_path / ("y/" * 3000)):
        code, out, err = run_in_process(TRAIN[framework], ["--out-dir", str(out_dir)],
                                        cli_name(framework), capsys)
        assert_usage_error(code, err, cli_name(framework), "--out-dir", "File name too long")
        assert out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_over_long_evaluation_paths_are_one_line(framework, tmp_path, capsys):
    cases = [(["--weights", str(tmp_path / LONG)], "--weights"),
             (["--weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / LONG)],
              "--out")]
    for argv, flag in cases:
        code, _, err = run_in_process(EVALUATE[framework], argv, cli_name(framework, "evaluate"),
                                      capsys)
        assert_usage_error(code, err, cli_name(framework, "evaluate"), flag, "File name too long")


def test_evaluate_out_is_a_directory(capsys, tmp_path):
    code, _, err = run_in_process(
        EVALUATE["torch"], ["--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path)],
        cli_name("torch", "evaluate"), capsys)
    assert_usage_error(code, err, cli_name("torch", "evaluate"),
                       f"--out {tmp_path}: is a directory")


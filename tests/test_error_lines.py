"""Mistakes at the edges answer in one line and leave nothing behind: paths the system cannot
look up, a JAX_PLATFORMS naming an absent platform, a metrics.json compare cannot read, a
dangling link in the data folder, a failed run's new directories, an unwritable HOME.
"""

import json

import pytest
from cli_helpers import assert_usage_error, cli_env, run_cli_subprocess, run_in_process

from flax_impl import evaluate as flax_evaluate
from flax_impl import train as flax_train
from mnist_common import compare
from mnist_common.data import MNIST_FILES, PROG, raw_dir
from mnist_common.data import __main__ as data_cli
from torch_impl import evaluate as torch_evaluate
from torch_impl import train as torch_train

TRAIN = {"torch": torch_train.main, "flax": flax_train.main}
EVALUATE = {"torch": torch_evaluate.main, "flax": flax_evaluate.main}
FRAMEWORKS = ["torch", "flax"]
LONG = "x" * 300  # one path component longer than any file system allows (255 bytes)
COMPARE = "python -m mnist_common.compare"


def prog(framework, tool="train"):
    return f"python -m {framework}_impl.{tool}"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_over_long_out_dir_is_one_line_and_creates_nothing(framework, tmp_path, capsys):
    for out_dir in (tmp_path / "new" / "a" / LONG, tmp_path / ("y/" * 3000)):
        code, out, err = run_in_process(TRAIN[framework], ["--out-dir", str(out_dir)],
                                        prog(framework), capsys)
        assert_usage_error(code, err, prog(framework), "--out-dir", "File name too long")
        assert out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_over_long_evaluation_paths_are_one_line(framework, tmp_path, capsys):
    cases = [(["--weights", str(tmp_path / LONG)], "--weights"),
             (["--weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / LONG)],
              "--out")]
    for argv, flag in cases:
        code, _, err = run_in_process(EVALUATE[framework], argv, prog(framework, "evaluate"),
                                      capsys)
        assert_usage_error(code, err, prog(framework, "evaluate"), flag, "File name too long")


def test_an_over_long_data_dir_is_one_line(tmp_path, capsys):
    code, _, err = run_in_process(data_cli.main, ["--data-dir", str(tmp_path / LONG)],
                                  PROG, capsys)
    assert_usage_error(code, err, PROG, "--data-dir", "File name too long")
    code, _, err = run_in_process(TRAIN["torch"], ["--data-dir", str(tmp_path / LONG)],
                                  prog("torch"), capsys)
    assert_usage_error(code, err, prog("torch"), "--data-dir", "File name too long")


@pytest.mark.parametrize("module", ["flax_impl.train", "flax_impl.evaluate"])
def test_jax_platforms_naming_an_absent_platform_is_one_line(module, weights_file, tmp_path):
    args = (["--device", "cpu", "--out-dir", tmp_path / "run"] if module.endswith("train")
            else ["--weights", weights_file])
    done = run_cli_subprocess(module, *args, env=cli_env(JAX_PLATFORMS="cuda"), timeout=120)
    assert_usage_error(done.returncode, done.stderr, f"python -m {module}",
                       "JAX_PLATFORMS=cuda: JAX cannot start it", "unset JAX_PLATFORMS")
    assert list(tmp_path.iterdir()) == []


RECORDS = {
    "a JSON list": [1, 2],
    "missing keys": {"framework": "torch"},
    "a wrong type": {"framework": "torch", "device": "cpu", "test_accuracy": "high",
                     "test_loss": 0.1, "train_seconds": 1, "train_images_per_second": 1,
                     "step_losses": [1.0], "epochs": []},
}


@pytest.mark.parametrize("record", RECORDS, ids=list(RECORDS))
def test_compare_refuses_what_is_not_a_run_record(record, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(RECORDS[record]))
    code, _, err = run_in_process(compare.main, [str(tmp_path / "run")], COMPARE, capsys)
    assert_usage_error(code, err, COMPARE, f"{tmp_path / 'run' / 'metrics.json'}: not the "
                       "metrics.json of a training run of this project")
    assert not (tmp_path / "compare.png").exists()


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
                                                   str(tmp_path / "run")], prog("torch"), capsys)
    assert_usage_error(code, err, prog("torch"), expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_failed_run_removes_the_directories_it_created(framework, small_mnist,
                                                         jax_compile_cache, tmp_path, capsys):
    (tmp_path / "kept").mkdir()
    out_dir = tmp_path / "kept" / "a" / "b"
    code, _, err = run_in_process(TRAIN[framework], ["--batch-size", "16", "--epochs", "1",
                                                     "--lr", "1e30", "--no-progress",
                                                     "--out-dir", str(out_dir)],
                                  prog(framework), capsys)
    assert code == 2 and "training loss became nan at step 2" in err, err
    assert list((tmp_path / "kept").iterdir()) == []  # a/b gone, the user's folder stays


def test_an_unwritable_home_adds_nothing_to_stderr(tmp_path):
    """Matplotlib's config-directory warnings are not a run's business (HOME=/proc/self is
    unwritable even for root)."""
    run = tmp_path / "run"
    run.mkdir()
    metrics = {"framework": "torch", "device": "cpu", "test_accuracy": 0.9, "test_loss": 0.3,
               "train_seconds": 1.0, "train_images_per_second": 10.0, "step_losses": [2.0, 1.0],
               "epochs": [{"epoch": 1, "step": 2, "test_accuracy": 0.9}]}
    (run / "metrics.json").write_text(json.dumps(metrics))
    done = run_cli_subprocess("mnist_common.compare", run, env=cli_env(HOME="/proc/self",
                                                                      MPLCONFIGDIR=None,
                                                                      XDG_CONFIG_HOME=None,
                                                                      XDG_CACHE_HOME=None),
                              timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"

"""Flags and settings a CLI refuses: one line on stderr (`prog: error: ...`), exit status 2, no
traceback, nothing created. In-process, through each CLI's `main` as `python -m` runs it; where
only a new process can tell (JAX_PLATFORMS), the real command.
"""

import pytest
import torch
from cli_helpers import (
    EVALUATE,
    TRAIN,
    assert_usage_error,
    cli_env,
    run_cli_subprocess,
    run_in_process,
)
from safetensors.numpy import save_file
from weight_helpers import random_weights

from mnist_common.config import FRAMEWORKS, cli_name

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


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("argv, words", BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_bad_flag(framework, argv, words, capsys, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = run_in_process(TRAIN[framework], [*argv, "--out-dir", str(out_dir)],
                                    cli_name(framework), capsys)
    assert_usage_error(code, err, cli_name(framework), words, "(see --help)")
    assert out == "" and not out_dir.exists()


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("device", ["cuda", "gpu"])
def test_absent_gpu(framework, device, capsys, tmp_path):
    if (framework == "torch" and torch.cuda.is_available()) or (
            framework == "flax" and __import__("jax").default_backend() != "cpu"):
        pytest.skip("a GPU is present")
    out_dir = tmp_path / "out"
    code, _, err = run_in_process(TRAIN[framework], ["--device", device, "--out-dir",
                                                     str(out_dir)], cli_name(framework), capsys)
    assert_usage_error(code, err, cli_name(framework), f"--device {device}: no ")
    assert not out_dir.exists()
    save_file(random_weights(), str(tmp_path / "w.safetensors"))
    code, _, err = run_in_process(EVALUATE[framework], ["--device", device, "--weights",
                                                        str(tmp_path / "w.safetensors")],
                                  cli_name(framework, "evaluate"), capsys)
    assert_usage_error(code, err, cli_name(framework, "evaluate"), f"--device {device}: no ")


@pytest.mark.data
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_batch_larger_than_the_training_set(framework, mnist_root, capsys, tmp_path):
    code, _, err = run_in_process(
        TRAIN[framework], ["--batch-size", "60001", "--out-dir", str(tmp_path / "out"),
                           "--no-progress"], cli_name(framework), capsys)
    assert_usage_error(code, err, cli_name(framework),
                       "--batch-size 60001 is larger than the training set (60000 images)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", ["flax_impl.train", "flax_impl.evaluate"])
def test_jax_platforms_naming_an_absent_platform_is_one_line(module, weights_file, tmp_path):
    args = (["--device", "cpu", "--out-dir", tmp_path / "run"] if module.endswith("train")
            else ["--weights", weights_file])
    done = run_cli_subprocess(module, *args, env=cli_env(JAX_PLATFORMS="cuda"), timeout=120)
    assert_usage_error(done.returncode, done.stderr, f"python -m {module}",
                       "JAX_PLATFORMS=cuda: JAX cannot start it", "unset JAX_PLATFORMS")
    assert list(tmp_path.iterdir()) == []


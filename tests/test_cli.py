"""The four CLIs: --help, outputs, determinism, Ctrl-C and --resume (as real subprocesses).

Expensive runs are started side by side by module fixtures and shared between tests.
"""

import importlib
import json
import re
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from cli_helpers import (
    REPO,
    assert_same_run,
    cli_env,
    finish,
    read_run,
    run_in_process,
    start_cli,
    start_cli_paused_at_step,
    wait_for_file,
)
from safetensors.numpy import load_file
from torch import nn

from mnist_common import loaders
from mnist_common.weights import CANONICAL_SHAPES

pytestmark = pytest.mark.data
CLIS = ["torch_impl.train", "flax_impl.train", "torch_impl.evaluate", "flax_impl.evaluate"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("module", CLIS)
def test_help_exits_0_and_shows_defaults(module, capsys):
    main = importlib.import_module(module).main
    code, out, err = run_in_process(main, ["--help"], f"python -m {module}", capsys)
    assert code == 0, err
    assert out.startswith(f"usage: python -m {module}")
    text = " ".join(out.split())  # argparse wraps lines
    if module.endswith(".train"):
        for default in ("(default: 10)", "(default: 256)", "(default: 0.0002)", "(default: 0)",
                        "(default: auto)", "(default: memory)", "--max-steps N", "--resume"):
            assert default in text, default
    else:
        assert "--weights FILE" in text and "(default: auto)" in text


@pytest.fixture(scope="module")
def torch_runs(mnist_root, tmp_path_factory):
    """Two 20-step torch runs with the same seed, side by side."""
    base = tmp_path_factory.mktemp("torch-runs")
    flags = ["--max-steps", 20, "--batch-size", 64, "--no-progress"]
    processes = [start_cli("torch_impl.train", *flags, "--out-dir", base / name)
                 for name in ("a", "b")]
    for process in processes:
        done = finish(process)
        assert done.returncode == 0, done.stderr
    return base / "a", base / "b"


def test_twenty_step_torch_run_writes_its_outputs(torch_runs):
    out_dir = torch_runs[0]
    metrics, weights = read_run(out_dir)
    assert metrics["framework"] == "torch" and metrics["steps"] == 20
    assert metrics["test_examples"] == 10000
    assert len(metrics["step_losses"]) == 20
    assert metrics["epochs"][-1]["partial"] is True
    assert {k: v.shape for k, v in weights.items()} == CANONICAL_SHAPES
    assert all(v.dtype == np.float32 for v in weights.values())
    assert (out_dir / "loss.png").read_bytes()[:8] == PNG_MAGIC
    assert (out_dir / "checkpoints" / "latest").read_text() == "step-0000020\n"


def test_torch_runs_are_bit_identical(torch_runs):
    assert_same_run(*torch_runs)


@pytest.fixture(scope="module")
def flax_runs(mnist_root, tmp_path_factory):
    """A 3-step Flax run; beside it, the same run stopped at step 2 and resumed in a new process.

    Three processes compute the same trajectory: equal results show both that Flax runs are
    deterministic across processes and that a resume (a new process: a new compile) is exact.
    """
    base = tmp_path_factory.mktemp("flax-runs")
    flags = ["--batch-size", 8, "--no-progress"]
    # The second leg may load the first leg's executables from this cache; the uninterrupted
    # run compiles its own, so equal results also cover "cached executable = fresh compile".
    cache = cli_env(JAX_COMPILATION_CACHE_DIR=str(base / "xla-cache"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    uninterrupted = start_cli("flax_impl.train", *flags, "--max-steps", 3,
                              "--out-dir", base / "uninterrupted")
    first_leg = finish(start_cli("flax_impl.train", *flags, "--max-steps", 2,
                                 "--out-dir", base / "resumed", env=cache))
    assert first_leg.returncode == 0, first_leg.stderr
    second_leg = finish(start_cli("flax_impl.train", *flags, "--max-steps", 3, "--resume",
                                  "--out-dir", base / "resumed", env=cache))
    assert second_leg.returncode == 0, second_leg.stderr
    assert "resuming from" in second_leg.stderr
    done = finish(uninterrupted)
    assert done.returncode == 0, done.stderr
    return base / "uninterrupted", base / "resumed"


def test_flax_runs_in_other_processes_and_resumed_are_bit_identical(flax_runs):
    assert_same_run(*flax_runs)


class TutorialCNN(nn.Module):
    """The tutorial's class as it was written (global batch size in forward and all)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.ReLU(), nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2, 2))
        self.fc_layer = nn.Sequential(nn.Linear(64 * 3 * 3, 100), nn.ReLU(), nn.Linear(100, 10))

    def forward(self, x):
        out = self.layer(x)
        out = out.view(TUTORIAL_BATCH_SIZE, -1)
        return self.fc_layer(out)


TUTORIAL_BATCH_SIZE = 1000  # divides 10,000, so the tutorial's view() sees only full batches


def test_tutorial_pt_loads_in_both_evaluate_clis(torch_runs, real_splits, tmp_path, capsys):
    model = TutorialCNN()
    trained = load_file(str(torch_runs[0] / "model.safetensors"))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in trained.items()})
    pt = tmp_path / "tutorial.pt"
    torch.save(model.state_dict(), pt)
    results = {}
    for module in ("torch_impl.evaluate", "flax_impl.evaluate"):
        main = importlib.import_module(module).main
        out = tmp_path / f"{module}.json"
        results[module] = run_in_process(main, ["--weights", str(pt), "--no-progress", "--out",
                                                str(out), "--device", "cpu"],
                                         f"python -m {module}", capsys), out

    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in loaders.eval_batches(real_splits[1],
                                                   batch_size=TUTORIAL_BATCH_SIZE):
            logits = model(torch.from_numpy(images))
            correct += int((logits.argmax(dim=1) == torch.from_numpy(labels)).sum())
    training_metrics, _ = read_run(torch_runs[0])
    assert training_metrics["test_correct"] == correct
    for module, ((code, stdout, stderr), out) in results.items():
        assert code == 0, stderr
        assert f"({correct}/10000)" in stdout, (module, stdout)
        assert json.loads(out.read_text())["test_correct"] == correct


# --- Ctrl-C -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sigint_runs(mnist_root, tmp_path_factory):
    """An 80-step run sent SIGINT while it is paused after step 5 (the pause is the test's, so a
    fast machine cannot finish first), beside the same run uninterrupted."""
    base = tmp_path_factory.mktemp("sigint")
    flags = ["--batch-size", 16, "--max-steps", 80, "--no-progress"]
    reference = start_cli("torch_impl.train", *flags, "--out-dir", base / "reference")
    process = start_cli_paused_at_step("torch_impl.train", 5, base / "paused", *flags,
                                       "--out-dir", base / "run")
    paused_at = int(wait_for_file(base / "paused", process))
    process.send_signal(signal.SIGINT)
    interrupted = finish(process)
    done = finish(reference)
    assert done.returncode == 0, done.stderr
    return base, interrupted, paused_at


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(sigint_runs):
    base, interrupted, step = sigint_runs
    terminal = interrupted.stderr
    assert interrupted.returncode == 130, terminal
    assert "Traceback" not in terminal and interrupted.stdout == ""
    match = re.search(r"SIGINT after step (\d+) \(epoch 1, batch \1 of 3750\); checkpoint saved "
                      r"in (\S+)\. Resume with: (.+?)\s*$", terminal, re.MULTILINE)
    assert match, terminal
    assert int(match.group(1)) == step and 5 <= step < 80  # where the test paused the run
    assert (base / "run" / "checkpoints" / "latest").read_text() == f"step-{step:07d}\n"
    assert not (base / "run" / "metrics.json").exists()

    # The printed command finishes the run; the result is the uninterrupted one, bit for bit.
    command = shlex.split(match.group(3))
    assert command[:3] == ["python", "-m", "torch_impl.train"]
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=cli_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {base / 'run' / 'checkpoints'}" in resumed.stderr
    assert_same_run(base / "run", base / "reference")

"""What a training run writes, and that it is deterministic: the outputs of a real 20-step run,
two runs bit-identical (also across processes and a resume in a new process), the trained
weights evaluated by both evaluation CLIs from the tutorial's own class, `--precision` recorded.
Expensive runs are started side by side by module fixtures and shared between tests.
"""

import importlib
import json

import numpy as np
import pytest
import torch
from cli_helpers import (
    EVALUATE,
    TRAIN,
    assert_same_run,
    cli_env,
    finish,
    read_run,
    run_in_process,
    start_cli,
)
from safetensors.numpy import load_file
from torch import nn

from mnist_common import loaders
from mnist_common.config import FRAMEWORKS, cli_name
from mnist_common.weights import CANONICAL_SHAPES

pytestmark = pytest.mark.data
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    # run compiles its own (no cache), so equal results also cover "cached executable = fresh
    # compile", on which the session's shared cache (cli_helpers.XLA_CACHE_ENV) relies.
    cache = cli_env(JAX_COMPILATION_CACHE_DIR=str(base / "xla-cache"))
    uninterrupted = start_cli("flax_impl.train", *flags, "--max-steps", 3,
                              "--out-dir", base / "uninterrupted",
                              env=cli_env(JAX_COMPILATION_CACHE_DIR=None))
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
        test_split = real_splits[1]
        index_lists = loaders.eval_index_batches(len(test_split[1]), TUTORIAL_BATCH_SIZE)
        for images, labels in loaders.batches_of(test_split, index_lists, train=False):
            logits = model(torch.from_numpy(images))
            correct += int((logits.argmax(dim=1) == torch.from_numpy(labels)).sum())
    training_metrics, _ = read_run(torch_runs[0])
    assert training_metrics["test_correct"] == correct
    for module, ((code, stdout, stderr), out) in results.items():
        assert code == 0, stderr
        assert f"({correct}/10000)" in stdout, (module, stdout)
        assert json.loads(out.read_text())["test_correct"] == correct


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_precision_is_accepted_and_recorded_by_all_four_clis(framework, small_mnist, tmp_path,
                                                             capsys):
    out_dir = tmp_path / "run"
    code, _, err = run_in_process(TRAIN[framework], [
        "--device", "cpu", "--precision", "tf32", "--max-steps", "2", "--batch-size", "16",
        "--no-progress", "--out-dir", str(out_dir)], cli_name(framework), capsys)
    assert code == 0, err
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["precision"] == "tf32" and metrics["config"]["precision"] == "tf32"
    code, _, err = run_in_process(EVALUATE[framework], [
        "--weights", str(out_dir / "model.safetensors"), "--device", "cpu", "--precision",
        "tf32", "--no-progress", "--out", str(tmp_path / "eval.json")],
        cli_name(framework, "evaluate"), capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "eval.json").read_text())["precision"] == "tf32"


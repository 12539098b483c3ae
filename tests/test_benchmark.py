"""Tests of benchmarks/run.py: the CLI, and that a --quick run writes every promised field."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import benchmark_module as _import
from cli_helpers import cli_env

from mnist_common.config import Config
from mnist_common.ownership import RECORD_NAME

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"
QUICK_TIMEOUT_S = 300  # a --quick run takes well under a minute on 2 idle cores

STATS = {"median", "min", "max"}


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=cli_env())


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `--quick --device cpu --no-epoch` run: (results dict, out dir, completed process)."""
    out = tmp_path_factory.mktemp("bench")
    done = _run("--quick", "--device", "cpu", "--no-epoch", "--out-dir", str(out),
                timeout=QUICK_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "cpu.json").read_text()), out, done


def _assert_stats(stats):
    assert STATS <= set(stats), stats
    assert 0 < stats["min"] <= stats["median"] <= stats["max"]


def test_help_exits_0():
    done = _run("--help")
    assert done.returncode == 0
    for flag in ("--quick", "--device", "--batch-sizes", "--variants", "--repeats", "--out-dir",
                 "--no-epoch", "--time-to-accuracy", "--precision", "--cli", "--no-cli"):
        assert flag in done.stdout
    assert "default: 64,256,1024" in done.stdout
    assert "{highest,tf32}" in done.stdout


def test_help_works_from_another_directory(tmp_path):
    done = subprocess.run([sys.executable, str(RUN), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [("--batch-sizes", "0"), ("--variants", "torch-eager,nope"),
                                  ("--device", "tpu"), ("--precision", "fp16")])
def test_bad_value_is_one_line_exit_2(args, tmp_path):
    done = _run(*args, "--out-dir", str(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("benchmarks/run.py: error: ")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_quick_run_writes_json_markdown_png(quick):
    _, out, done = quick
    assert sorted(p.name for p in out.iterdir()) == [RECORD_NAME, "cpu.json", "cpu.md", "cpu.png"]
    assert (out / "cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "cpu.md").read_text()
    assert "× torch-eager" in text  # the ratio column
    assert "| torch-eager |" in text and "| flax-jit |" in text
    assert text.strip() in done.stdout  # the table is printed at the end
    assert "[cpu] training, batch 64" in done.stderr  # progress lines


def test_quick_run_environment_and_method(quick):
    results, _, _ = quick
    assert results["schema"] == "mnist-cnn-benchmark/1"
    assert results["device"] == "cpu" and results["quick"] is True
    assert results["precision"] == "highest"
    env = results["environment"]
    for key in ("torch", "torchvision", "jax", "jaxlib", "flax", "optax", "numpy", "python"):
        assert env["versions"][key], key
    for key in ("cpu_model", "cpu_count", "torch_num_threads", "load_average", "platform"):
        assert env[key] is not None, key
    assert results["method"]["repeats"] == 2
    assert results["wall_seconds"] > 0


def test_quick_run_flops_from_shapes(quick):
    flops = quick[0]["flops"]
    layers = {row["layer"]: row for row in flops["layers"]}
    assert list(layers) == ["layer.0", "layer.2", "layer.5", "fc_layer.0", "fc_layer.2"]
    # The tutorial's shapes: conv 1->16 on 28x28 gives 16x24x24 from 5x5 kernels.
    assert layers["layer.0"]["macs_per_image"] == 16 * 24 * 24 * 1 * 5 * 5
    assert layers["fc_layer.0"]["macs_per_image"] == 576 * 100
    assert flops["forward_per_image"] == 2 * sum(r["macs_per_image"] for r in layers.values())
    assert flops["train_per_image"] == 3 * flops["forward_per_image"]
    assert "3 x forward" in flops["convention"]


def test_quick_run_peak_gemm(quick):
    results = quick[0]
    gemm = results["peak_gemm"]
    assert gemm["size"] == 2048
    for name in ("torch", "jax"):
        _assert_stats(gemm[name]["gflop_per_second"])
    assert results["peak_gflop_per_second"] == gemm["torch"]["gflop_per_second"]["median"]


def test_quick_run_every_variant_and_batch(quick):
    results = quick[0]
    variants = results["variants"]
    assert "torch-compile" not in variants  # --quick leaves it out
    ran = [name for name, v in variants.items() if v["status"] == "ok"]
    assert {"torch-eager", "torch-channels-last", "flax-jit"} <= set(ran)
    for name in ran:
        train = results["train"]["64"][name]
        _assert_stats(train["images_per_second"])
        _assert_stats(train["seconds_per_call"])
        _assert_stats(train["gflop_per_second"])
        assert len(train["seconds_per_call"]["samples"]) == 2
        assert train["calls_per_window"] == [2, 2]
        assert train["first_call_seconds"] > 0
        assert 0 < train["percent_of_peak"]
        assert train["memory"]["host_peak_rss_bytes"] > 0
        assert len(train["other_load_per_window"]) == 2  # other processes' share of the CPUs
        assert all(0 <= load <= 1 for load in train["other_load_per_window"])
        for batch in ("1", "256"):
            inference = results["inference"][batch][name]
            _assert_stats(inference["images_per_second"])
            assert inference["first_call_seconds"] > 0
            assert inference["percent_of_peak"] > 0
        _assert_stats(results["latency_ms"][name])


def test_quick_run_layers(quick):
    layers = quick[0]["layers"]
    assert layers["batch_size"] == 64
    assert len(layers["rows"]) == 5
    for row in layers["rows"]:
        for key in ("forward_ms", "forward_backward_ms"):
            assert {"torch", "flax"} <= set(row[key]), row["layer"]
            for stats in row[key].values():
                _assert_stats(stats)


def test_quick_run_memory_and_skips(quick):
    results = quick[0]
    assert results["memory"]["host_peak_rss_bytes"] > 0
    assert results["memory"]["torch_device_peak_bytes"] is None  # CPU
    assert results["end_to_end"] == {"skipped": "--no-epoch"}
    assert "skipped" in results["time_to_accuracy"]
    assert "--cli" in results["cli"]["skipped"]  # a CPU runs the CLIs only when asked


def test_flax_xla_defaults_runs_where_the_engine_differs(quick):
    device = _import("harness").find_devices("cpu", "highest")[0]
    assert _import("isolated").flax_engine_differs(device.flax)  # the CPU: xla_cpu applies
    assert quick[0]["variants"]["flax-xla-defaults"]["status"] == "ok"


def test_render_rewrites_reports_even_for_an_interrupted_run(quick, tmp_path, capsys):
    """--render: .md and .png from a JSON alone (a GPU image may lack matplotlib)."""
    results = dict(quick[0], complete=False)
    for key in ("inference", "latency_ms", "layers", "end_to_end", "time_to_accuracy", "memory"):
        results.pop(key)
    (tmp_path / "cpu.json").write_text(json.dumps(results))
    _import("session").render(tmp_path / "cpu.json")
    text = (tmp_path / "cpu.md").read_text()
    assert "Interrupted" in text and "× torch-eager" in text
    assert (tmp_path / "cpu.png").stat().st_size > 0
    assert capsys.readouterr().out.strip() == text.strip()


def _tiny_splits(train=40, test=24):
    rng = np.random.default_rng(0)
    return ((rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
             rng.integers(0, 10, train)),
            (rng.integers(0, 256, (test, 28, 28), dtype=np.uint8), rng.integers(0, 10, test)))


def test_time_to_accuracy_on_tiny_data():
    """The time-to-accuracy path, the CLIs' loop on 40 random images in batches of 16 (last
    batch 8): every epoch recorded until the target or the last epoch."""
    device = _import("harness").find_devices("cpu", "highest")[0]
    config = Config(batch_size=16, epochs=2)
    training = _import("training")
    tta = dict(training.measure_time_to_accuracy(device, (None, *_tiny_splits()), config))
    default_variant = _import("isolated").default_variant  # torch: channels_last on the CPU
    for name in (default_variant("torch", device.torch), default_variant("flax", device.flax)):
        result = tta[name]
        assert result["max_epochs"] == 2
        assert len(result["epochs"]) == (result["epochs_to_target"] or 2)
        assert result["reached"] == (result["seconds_to_target"] is not None)
        assert result["first_call_seconds"] > 0
        assert all(0 <= e["test_accuracy"] <= 1 and e["train_seconds"] > 0
                   for e in result["epochs"])


def test_time_to_accuracy_stops_at_the_target(monkeypatch):
    """A target the first epoch reaches ends the run there: one epoch of three, its seconds."""
    training = _import("training")
    monkeypatch.setattr(training, "TARGET_ACCURACY", 0.0)
    device = _import("harness").find_devices("cpu", "highest")[0]
    config = Config(batch_size=16, epochs=3)
    tta = dict(training.measure_time_to_accuracy(device, (None, *_tiny_splits()), config))
    for result in tta.values():
        assert result["reached"] and result["epochs_to_target"] == 1
        assert [e["epoch"] for e in result["epochs"]] == [1]
        assert result["seconds_to_target"] == result["epochs"][0]["train_seconds"] > 0


def test_plain_flax_step_is_the_engines_step():
    """flax-xla-defaults jits `plain_train_step` plainly; under the engine's compiler options
    (`flax_impl.xla_cpu.jit`) it is the engine's train_step, bit for bit."""
    import jax

    from flax_impl import xla_cpu

    isolated = _import("isolated")
    device = _import("harness").find_devices("cpu", "highest")[0]
    engine = isolated.flax_variant("flax-jit", device)
    batch = isolated.placed_batch(engine, 32)
    state, metrics = isolated.flax_backend.train_step(engine.state, batch)
    plain_state, plain_metrics = xla_cpu.jit(isolated.plain_train_step)(engine.state, batch)
    assert float(metrics["loss"]) == float(plain_metrics["loss"])
    for a, b in zip(jax.tree_util.tree_leaves(state.params),
                    jax.tree_util.tree_leaves(plain_state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _git_status(path):
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", str(path)],
                          capture_output=True, text=True, cwd=REPO)
    return done.stdout if done.returncode == 0 else None


@pytest.mark.data
def test_quick_run_writes_to_scratch_and_runs_end_to_end(mnist_root):
    """--quick without --out-dir leaves the repository as it was; the end-to-end section trains
    both frameworks through the CLIs' loop (2 steps) beside the isolated step at batch 256."""
    before = _git_status(REPO / "benchmarks")
    # torch-channels-last: the variant the CPU engine runs, which end to end is set beside.
    done = _run("--quick", "--device", "cpu", "--no-layers", "--variants",
                "torch-eager,torch-channels-last,flax-jit", "--batch-sizes", "256",
                "--inference-batch-sizes", "1", timeout=QUICK_TIMEOUT_S)
    found = re.search(r"scratch directory (\S+)", done.stderr)
    assert found, done.stderr[-3000:]
    scratch = Path(found.group(1))
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        assert REPO not in scratch.resolve().parents
        assert _git_status(REPO / "benchmarks") == before
        assert sorted(p.name for p in scratch.iterdir()) == [
            RECORD_NAME, "cpu.json", "cpu.md", "cpu.png"]
        results = json.loads((scratch / "cpu.json").read_text())
        e2e = results["end_to_end"]
        assert set(e2e) == {"torch", "flax"}
        for framework, entry in e2e.items():
            assert entry["variant"] == {"torch": "torch-channels-last",  # the CPU engine's
                                        "flax": "flax-jit"}[framework]
            assert entry["steps"] == 2 and entry["complete_epoch"] is False
            assert entry["train_seconds"] > 0 and entry["train_images_per_second"] > 0
            assert 0 <= entry["test_accuracy"] <= 1
            assert entry["isolated_step_images_per_second"] > 0
            assert entry["end_to_end_vs_isolated"] > 0
        assert "## End to end" in (scratch / "cpu.md").read_text()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_cli_section_runs_the_training_cli(tmp_path):
    """The --cli command is the CLI users type; its report says what metrics lack."""
    training = _import("training")
    device = _import("harness").find_devices("cpu", "highest")[0]
    words = training.cli_command("torch", device, "tf32", False, tmp_path / "run", "/data")
    assert words[1:] == ["-m", "torch_impl.train", "--device", "cpu", "--precision", "tf32",
                         "--no-progress", "--out-dir", str(tmp_path / "run"), "--data-dir",
                         "/data"]
    quick_words = training.cli_command("flax", device, "highest", True, tmp_path, "/data")
    assert quick_words[-4:] == ["--epochs", "1", "--max-steps", "2"]
    run = {"steps": 2350, "epochs": 10, "train_seconds": 8.5, "ten_epoch_train_seconds": 8.5,
           "process_seconds": 22.0, "first_call_seconds": None,
           "train_images_per_second": 70000.0, "test_accuracy": 0.987}
    text = "\n".join(_import("report").cli_lines({"torch": {"highest": run},
                                                  "flax": {"tf32": {"error": "exit status 2"}}}))
    assert "| torch | highest | 2350 | 8.5 | 22.0 | — | 98.70 % |" in text
    assert "failed: exit status 2" in text


@pytest.mark.slow
def test_scaling_reports_one_and_two(tmp_path, mnist_root):
    """`run.py scaling`: the training CLIs on 1 and 2 processes / devices, one table."""
    done = _run("scaling", "--steps", "3", "--devices", "1,2", "--out-dir", str(tmp_path),
                timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "scaling-cpu.json").read_text())
    rows = {(row["framework"], row["count"]): row for row in results["rows"]}
    assert set(rows) == {("torch", 1), ("torch", 2), ("flax", 1), ("flax", 2)}
    for (_, count), row in rows.items():
        assert row["steps"] == 3 and row["images_per_second"] > 0
        assert (f"x {count} " in row["device"]) == (count > 1), row["device"]
    # Three identical steps on 1 and 2 devices end at the same loss.
    for framework in ("torch", "flax"):
        assert abs(rows[framework, 1]["final_loss"] - rows[framework, 2]["final_loss"]) < 1e-5
    table = (tmp_path / "scaling-cpu.md").read_text()
    assert table.count("| torch |") == 2 and table.count("| flax |") == 2
    assert table in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        RECORD_NAME, "scaling-cpu.json", "scaling-cpu.md"]


def test_scaling_rejects_bad_counts(tmp_path):
    done = _run("scaling", "--devices", "1,0", "--out-dir", str(tmp_path / "new"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("benchmarks/run.py: error: ") and "at least 1" in lines[0]
    assert list(tmp_path.iterdir()) == []

"""Training as users run it: one real MNIST epoch through the CLIs' loop in this process
(`mnist_common.loop.train_and_evaluate`), and with `--cli` the training CLIs themselves as fresh
processes for the tutorial's 10 epochs, timed from outside."""

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.environment import memory
from benchmarks.timing import OtherLoad, describe_error, status, wait_for_quiet
from benchmarks.variants import BACKENDS, TUTORIAL, default_variant
from mnist_common import data, loop
from mnist_common.config import PRECISIONS, Config
from mnist_common.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DEVICE_FLAG = {"cpu": "cpu", "gpu": "cuda"}  # the CLIs' --device for a benchmark device
QUICK_STEPS = 2  # --quick: train steps of a run (then it still evaluates every test image)
CLI_TIMEOUT_S = 3600
_PREALLOCATION = {}  # what keep_gpu_memory_free changed, to undo it for the CLI processes


def prepare_data(quick):
    """(data root, None) or (None, why not): --quick only uses MNIST already prepared."""
    try:
        return data.prepare_data(None, sources=[] if quick else None, progress=not quick), None
    except DataError as err:
        return None, str(err)


def frameworks(device):
    return [name for name in ("torch", "flax") if getattr(device, name) is not None]


def measure_end_to_end(device, settings, data_root):
    """One epoch (--quick: QUICK_STEPS steps) per framework through `train_and_evaluate`."""
    max_steps = QUICK_STEPS if settings.quick else None
    out = {}
    for framework in frameworks(device):
        status(f"[{device.kind}] end to end, {framework}: train_and_evaluate, 1 epoch"
               + (f", {max_steps} steps" if max_steps else ""))
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
            config = Config(epochs=1, max_steps=max_steps, out_dir=str(Path(tmp) / "run"),
                            data_dir=str(data_root), progress=False,
                            device=DEVICE_FLAG[device.kind], precision=settings.precision)
            wait_for_quiet(settings.wait_quiet)
            other_load = OtherLoad()
            start = time.perf_counter()
            metrics = loop.train_and_evaluate(config, BACKENDS[framework])
            wall = time.perf_counter() - start
        out[framework] = {
            "variant": default_variant(framework, getattr(device, framework)),
            "steps": metrics["steps"],
            "complete_epoch": max_steps is None, "train_seconds": metrics["train_seconds"],
            "train_images_per_second": metrics["train_images_per_second"],
            "test_accuracy": metrics["test_accuracy"], "wall_seconds": wall,
            "other_load": other_load.stop(), "memory": memory(device)}
        status(f"[{device.kind}]   {framework}: {metrics['train_seconds']:.1f} s, "
               f"{metrics['train_images_per_second']:.0f} images/s, test accuracy "
               f"{100 * metrics['test_accuracy']:.2f} %")
    return out


def beside_isolated(end_to_end, train, batch_size=TUTORIAL.batch_size):
    """Add the isolated train step's images/s at the same batch size, and the ratio."""
    for entry in end_to_end.values():
        isolated = train.get(batch_size, {}).get(entry["variant"], {})
        rate = isolated.get("images_per_second", {}).get("median")
        entry["isolated_step_images_per_second"] = rate
        entry["end_to_end_vs_isolated"] = entry["train_images_per_second"] / rate if rate else None
    return end_to_end


def keep_gpu_memory_free():
    """This process's JAX allocates as it goes (not 75 % up front), so a CLI beside it fits;
    the CLI processes get the environment as it was."""
    name = "XLA_PYTHON_CLIENT_PREALLOCATE"
    if name not in os.environ:
        _PREALLOCATION[name] = None
        os.environ[name] = "false"


def _child_environment():
    env = {k: v for k, v in os.environ.items() if k not in _PREALLOCATION}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def cli_command(framework, device, precision, quick, out_dir, data_root):
    """The training CLI's command line, as a user types it."""
    words = [sys.executable, "-m", f"{framework}_impl.train", "--device", DEVICE_FLAG[device.kind],
             "--precision", precision, "--no-progress", "--out-dir", str(out_dir),
             "--data-dir", str(data_root)]
    return words + (["--epochs", "1", "--max-steps", str(QUICK_STEPS)] if quick else [])


def run_cli(framework, device, precision, settings, data_root):
    """One training CLI run in a fresh process: its metrics.json figures and its wall time."""
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        words = cli_command(framework, device, precision, settings.quick, Path(tmp) / "run",
                            data_root)
        other_load = OtherLoad()
        start = time.perf_counter()
        done = subprocess.run(words, cwd=REPO, env=_child_environment(), capture_output=True,
                              text=True, timeout=CLI_TIMEOUT_S)
        process_seconds = time.perf_counter() - start
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [""])[-1]
            return {"error": f"exit status {done.returncode}: {last}"[:500]}
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    full = not settings.quick and metrics["config"]["epochs"] == 10
    return {
        "command": shlex.join(["python", *words[1:]]).replace(tmp, "<tmp>"),
        "steps": metrics["steps"], "epochs": metrics["config"]["epochs"],
        "train_seconds": metrics["train_seconds"],
        "ten_epoch_train_seconds": metrics["train_seconds"] if full else None,
        "process_seconds": process_seconds,
        # The CLI's first dispatch (compile or capture, and that dispatch's steps).
        "first_call_seconds": metrics.get("first_call_seconds") or 0.0,
        "first_call_recorded": metrics.get("first_call_seconds") is not None,
        "train_images_per_second": metrics["train_images_per_second"],
        "test_accuracy": metrics["test_accuracy"], "other_load": other_load.stop()}


def measure_cli(device, settings, data_root):
    """{framework: {precision: run_cli figures}}: every precision on a GPU, the chosen one on a
    CPU (float32 there either way)."""
    precisions = PRECISIONS if device.kind == "gpu" else (settings.precision,)
    if device.kind == "gpu" and device.torch is not None:
        import torch

        torch.cuda.empty_cache()
    out = {}
    for framework in frameworks(device):
        out[framework] = {}
        for precision in precisions:
            status(f"[{device.kind}] CLI, {framework}, --precision {precision}")
            try:
                out[framework][precision] = run_cli(framework, device, precision, settings,
                                                    data_root)
            except (OSError, ValueError, KeyError, subprocess.SubprocessError) as err:
                out[framework][precision] = {"error": describe_error(err)}
    return out

"""Training as users run it, on real MNIST: one epoch through the CLIs' loop in this process
(`mnist_common.loop`), the same loop stopped at the first epoch that reaches 98.5 % test
accuracy, the training CLIs as fresh processes (`--cli`), and data-parallel scaling
(`run.py scaling`: the CLIs on 1 and N processes / devices)."""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import REPO
from benchmarks.environment import memory
from benchmarks.harness import last_line, run_process
from benchmarks.timing import OtherLoad, describe_error, status, wait_for_quiet
from benchmarks.variants import BACKENDS, DEFAULT_VARIANT, TUTORIAL
from mnist_common import data, loop
from mnist_common.config import PRECISIONS, Config
from mnist_common.errors import DataError, UsageError

DEVICE_FLAG = {"cpu": "cpu", "gpu": "cuda"}  # the CLIs' --device for a benchmark device
QUICK_STEPS = 2  # --quick: train steps of a run (then it still evaluates every test image)
TARGET_ACCURACY = 0.985  # the tutorial reports 98.53 % after 10 epochs
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


class Run(loop.TrainingRun):
    """The CLIs' training run, in a temp dir that goes with it: a stop leaves no checkpoint
    and prints no `--resume` command."""

    def stop(self, signum):
        raise SystemExit(128 + signum)


class UntilTarget(Run):
    """The same, ended after the first epoch whose test accuracy reaches the target (its
    evaluation is the loop's own, after the epoch's clock has stopped)."""

    def train_epoch(self, stop_requests, bar):
        stopping = super().train_epoch(stop_requests, bar)
        epochs = self.progress["epochs"]
        if epochs and epochs[-1]["test_accuracy"] >= TARGET_ACCURACY:
            self.total_steps = self.progress["global_step"]
        return stopping


def train_in_loop(device, framework, config, splits, run_class=Run):
    """One run of the CLIs' loop on the benchmark's placement, into a temp dir: (metrics,
    wall seconds, others' CPU share). `splits` = (data root, train arrays, test arrays)."""
    backend, placement = BACKENDS[framework], getattr(device, framework)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        config = dataclasses.replace(config, out_dir=tmp, progress=False)
        run = run_class(config, backend, placement, splits)
        state = backend.create_train_state(config, placement)
        other_load = OtherLoad()
        metrics = run.train(state, Path(tmp), None)
        return metrics, other_load.seconds(), other_load.stop()


def measure_end_to_end(device, settings, splits):
    """Yields (framework, figures) of one epoch (--quick: QUICK_STEPS steps) through the loop."""
    max_steps = QUICK_STEPS if settings.quick else None
    config = Config(epochs=1, max_steps=max_steps, data_dir=str(splits[0]),
                    device=DEVICE_FLAG[device.kind], precision=settings.precision)
    for framework in frameworks(device):
        status(f"[{device.kind}] end to end, {framework}: the CLIs' loop, 1 epoch"
               + (f", {max_steps} steps" if max_steps else ""))
        wait_for_quiet(settings.wait_quiet)
        metrics, wall, load = train_in_loop(device, framework, config, splits)
        yield framework, {
            "variant": DEFAULT_VARIANT[framework], "steps": metrics["steps"],
            "complete_epoch": max_steps is None, "train_seconds": metrics["train_seconds"],
            "train_images_per_second": metrics["train_images_per_second"],
            "test_accuracy": metrics["test_accuracy"], "wall_seconds": wall,
            "other_load": load, "memory": memory(device)}
        status(f"[{device.kind}]   {framework}: {metrics['train_seconds']:.1f} s, "
               f"{metrics['train_images_per_second']:.0f} images/s, test accuracy "
               f"{100 * metrics['test_accuracy']:.2f} %")


def beside_isolated(end_to_end, train, batch_size=TUTORIAL.batch_size):
    """Add the isolated train step's images/s at the same batch size, and the ratio."""
    for entry in end_to_end.values():
        isolated = train.get(batch_size, {}).get(entry["variant"], {})
        rate = isolated.get("images_per_second", {}).get("median")
        entry["isolated_step_images_per_second"] = rate
        entry["end_to_end_vs_isolated"] = entry["train_images_per_second"] / rate if rate else None
    return end_to_end


def measure_time_to_accuracy(device, splits, config=TUTORIAL):
    """Yields (variant, run) per framework: the CLIs' loop (data on the device, compile
    included) until test accuracy >= TARGET_ACCURACY or `config.epochs`."""
    for framework in frameworks(device):
        status(f"[{device.kind}] time to {100 * TARGET_ACCURACY:.1f} %, {framework}")
        metrics, _, load = train_in_loop(device, framework, config, splits, UntilTarget)
        epochs = [{k: e[k] for k in ("epoch", "train_seconds", "test_accuracy")}
                  for e in metrics["epochs"]]
        reached = epochs[-1]["test_accuracy"] >= TARGET_ACCURACY
        yield DEFAULT_VARIANT[framework], {
            "framework": framework, "target_accuracy": TARGET_ACCURACY, "reached": reached,
            "epochs_to_target": len(epochs) if reached else None,
            "seconds_to_target": metrics["train_seconds"] if reached else None,
            "epochs": epochs, "max_epochs": config.epochs,
            "first_call_seconds": metrics["first_call_seconds"], "other_load": load,
            "memory": memory(device)}


def keep_gpu_memory_free():
    """This process's JAX allocates as it goes (not 75 % up front), so a CLI beside it fits;
    the CLI processes get the environment as it was."""
    name = "XLA_PYTHON_CLIENT_PREALLOCATE"
    if name not in os.environ:
        _PREALLOCATION[name] = None
        os.environ[name] = "false"


def child_environment(**extra):
    env = {k: v for k, v in os.environ.items() if k not in _PREALLOCATION}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


def run_training_cli(words, out_dir, env=None):
    """A training CLI as a fresh process: (its metrics.json, process seconds); a failure is a
    UsageError with its last line."""
    done, seconds = run_process(words, env or child_environment(), timeout=CLI_TIMEOUT_S)
    if done.returncode != 0:
        raise UsageError(last_line(done))
    return json.loads((Path(out_dir) / "metrics.json").read_text()), seconds


def cli_command(framework, device, precision, quick, out_dir, data_root):
    """The training CLI's command line, as a user types it."""
    words = [sys.executable, "-m", f"{framework}_impl.train", "--device", DEVICE_FLAG[device.kind],
             "--precision", precision, "--no-progress", "--out-dir", str(out_dir),
             "--data-dir", str(data_root)]
    return words + (["--epochs", "1", "--max-steps", str(QUICK_STEPS)] if quick else [])


def cli_figures(framework, device, precision, settings, data_root):
    """One training CLI run in a fresh process: its metrics.json figures and its wall time."""
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        words = cli_command(framework, device, precision, settings.quick, Path(tmp) / "run",
                            data_root)
        other_load = OtherLoad()
        metrics, process_seconds = run_training_cli(words, Path(tmp) / "run")
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
    """Yields (framework, {precision: figures}): every precision on a GPU, the chosen one on a
    CPU (float32 there either way)."""
    precisions = PRECISIONS if device.kind == "gpu" else (settings.precision,)
    if device.kind == "gpu" and device.torch is not None:
        import torch

        torch.cuda.empty_cache()
    for framework in frameworks(device):
        runs = {}
        for precision in precisions:
            status(f"[{device.kind}] CLI, {framework}, --precision {precision}")
            try:
                runs[precision] = cli_figures(framework, device, precision, settings, data_root)
            except (OSError, ValueError, KeyError, UsageError, subprocess.SubprocessError) as err:
                runs[precision] = {"error": describe_error(err)}
            yield framework, runs


def scaling_command(framework, count, device, steps, out_dir):
    """(words, environment) of one scaling point: the CLI on `count` processes / devices."""
    flags = ["--max-steps", str(steps), "--no-progress", "--device", device,
             "--out-dir", str(out_dir)]
    env = child_environment()
    if framework == "torch":
        if count == 1:
            return [sys.executable, "-m", "torch_impl.train", *flags], env
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={count}", "-m", "torch_impl.train", *flags], env
    if device == "cpu":
        env["XLA_FLAGS"] = (f"{env.get('XLA_FLAGS', '')} "
                            f"--xla_force_host_platform_device_count={count}").strip()
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(count)))
    return [sys.executable, "-m", "flax_impl.train", *flags], env


def scaling_point(framework, count, device, steps, scratch):
    """One real training run at global batch 256 on `count` processes / devices."""
    out_dir = Path(scratch) / f"{framework}-{count}"
    words, env = scaling_command(framework, count, device, steps, out_dir)
    status(f"scaling: {framework} on {count} "
           f"{'process' if framework == 'torch' else 'device'}{'s' if count > 1 else ''}")
    try:
        metrics, _ = run_training_cli(words, out_dir, env)
    except UsageError as err:
        raise UsageError(f"{' '.join(words[1:6])} ... failed: {err}") from None
    return {"framework": framework, "count": count, "device": metrics["device"],
            "steps": metrics["steps"], "train_seconds": metrics["train_seconds"],
            "images_per_second": metrics["train_images_per_second"],
            "final_loss": metrics["step_losses"][-1]}


def measure_scaling(device, steps, counts):
    """Both frameworks on each count, in a scratch dir: the rows of scaling-<device>.json."""
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as scratch:
        return [scaling_point(framework, count, device, steps, scratch)
                for framework in ("torch", "flax") for count in counts]

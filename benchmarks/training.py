"""Training as users run it, on real MNIST: the CLIs' loop (`mnist_common.loop`) in this process
for one epoch, and stopped at the first epoch that reaches 98.5 % test accuracy; the training
CLIs as fresh processes (`--cli`) and on 1 and N processes / devices (`run.py scaling`)."""

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import REPO, TARGET_ACCURACY, TUTORIAL
from benchmarks.harness import OtherLoad, describe_error, run_process, status
from benchmarks.isolated import BACKENDS, default_variant
from mnist_common import data, loop, rundir
from mnist_common.config import PRECISIONS, Config
from mnist_common.errors import DataError, UsageError

QUICK_STEPS = 2  # --quick: train steps of a run (then it still evaluates every test image)
CLI_TIMEOUT_S = 3600
CLI_ENVIRONMENT = dict(os.environ)  # the CLI processes get the environment the benchmark got


def prepare_data(quick):
    """(data root, None) or (None, why not): --quick only uses MNIST already prepared."""
    try:
        return data.prepare_data(None, sources=[] if quick else None, progress=not quick), None
    except DataError as err:
        return None, str(err)


def frameworks(device):
    return [name for name in BACKENDS if getattr(device, name) is not None]


def figures(metrics):
    """What the benchmark keeps of a training run's metrics."""
    return {k: metrics[k] for k in ("steps", "train_seconds", "train_images_per_second",
                                    "test_accuracy")}


class ScratchRun(rundir.Run):
    """The run directory of a benchmark's run in a temp dir: a stop exits at once, leaving no
    checkpoint and no `--resume` line."""

    def stop(self, arrays, progress):
        raise SystemExit(128 + (self.stop_requests.signum or signal.SIGTERM))


@contextlib.contextmanager
def scratch_run(config, framework, writer=True):
    """`rundir.open_run` for a temp dir that is thrown away (nothing to check or lock)."""
    yield ScratchRun(config, framework, Path(config.out_dir) if writer else None, None)


def _reached_target(progress):
    epochs = progress["epochs"]
    return bool(epochs) and epochs[-1]["test_accuracy"] >= TARGET_ACCURACY


def train_in_loop(device, framework, config, splits, until_target=False):
    """The CLIs' loop once, in a temp dir on (data root, train, test): (metrics, wall s, load);
    `until_target`: it ends after the first epoch whose test accuracy reaches the target."""
    backend, placement = BACKENDS[framework], getattr(device, framework)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        config = dataclasses.replace(config, out_dir=tmp, progress=False)
        state = backend.create_train_state(config, placement)
        other_load = OtherLoad()
        metrics = loop.fit(config, backend, placement, state, splits,
                           until=_reached_target if until_target else None,
                           open_run=scratch_run)
        return metrics, other_load.seconds(), other_load.stop()


def measure_end_to_end(device, settings, splits, train):
    """Yields (framework, figures) of one epoch (--quick: QUICK_STEPS steps) through the loop,
    beside the isolated train step (`train`, the results' section) at the same batch size."""
    max_steps = QUICK_STEPS if settings.quick else None
    config = Config(epochs=1, max_steps=max_steps, precision=settings.precision)
    for framework in frameworks(device):
        status(f"[{device.kind}] end to end, {framework}: the CLIs' loop, 1 epoch"
               + (f", {max_steps} steps" if max_steps else ""))
        metrics, wall, load = train_in_loop(device, framework, config, splits)
        variant = default_variant(framework, getattr(device, framework))
        isolated = train.get(config.batch_size, {}).get(variant, {}).get("images_per_second", {})
        rate = isolated.get("median")
        yield framework, {"variant": variant, "complete_epoch": max_steps is None,
                          **figures(metrics), "wall_seconds": wall, "other_load": load,
                          "isolated_step_images_per_second": rate, "end_to_end_vs_isolated":
                          metrics["train_images_per_second"] / rate if rate else None}


def measure_time_to_accuracy(device, splits, config=TUTORIAL):
    """Yields (variant, run) per framework: the CLIs' loop until TARGET_ACCURACY or the end."""
    for framework in frameworks(device):
        status(f"[{device.kind}] time to {100 * TARGET_ACCURACY:.1f} %, {framework}")
        metrics, _, load = train_in_loop(device, framework, config, splits, until_target=True)
        epochs = [{k: e[k] for k in ("epoch", "train_seconds", "test_accuracy")}
                  for e in metrics["epochs"]]
        reached = epochs[-1]["test_accuracy"] >= TARGET_ACCURACY
        yield default_variant(framework, getattr(device, framework)), {
            "framework": framework, "target_accuracy": TARGET_ACCURACY, "reached": reached,
            "epochs_to_target": len(epochs) if reached else None,
            "seconds_to_target": metrics["train_seconds"] if reached else None,
            "epochs": epochs, "max_epochs": config.epochs,
            "first_call_seconds": metrics["first_call_seconds"], "other_load": load}


def run_training_cli(words, out_dir, **extra_env):
    """A training CLI as a fresh process in the environment the benchmark got (and `extra_env`):
    (its metrics.json, process seconds), or a UsageError naming it."""
    env = {**CLI_ENVIRONMENT, **extra_env, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), CLI_ENVIRONMENT.get("PYTHONPATH")]))}
    done, seconds = run_process(words, env, timeout=CLI_TIMEOUT_S)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UsageError(f"{' '.join(words[1:6])} ... failed: exit status {done.returncode}: "
                         f"{last}"[:500])
    return json.loads((Path(out_dir) / "metrics.json").read_text()), seconds


def cli_command(framework, device, precision, quick, out_dir, data_root):
    """The training CLI's command line, as a user types it."""
    words = [sys.executable, "-m", f"{framework}_impl.train", "--device",
             device.kind.replace("gpu", "cuda"), "--precision", precision, "--no-progress",
             "--out-dir", str(out_dir), "--data-dir", str(data_root)]
    return words + (["--epochs", "1", "--max-steps", str(QUICK_STEPS)] if quick else [])


def cli_figures(framework, device, precision, settings, data_root):
    """One training CLI run in a fresh process: its metrics.json figures and its wall time."""
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        words = cli_command(framework, device, precision, settings.quick, Path(tmp) / "run",
                            data_root)
        other_load = OtherLoad()
        metrics, process_seconds = run_training_cli(words, Path(tmp) / "run")
    epochs = metrics["config"]["epochs"]
    return {"epochs": epochs, "process_seconds": process_seconds, **figures(metrics),
            "ten_epoch_train_seconds": metrics["train_seconds"] if epochs == 10 else None,
            # The first dispatch (compile and its steps); None when the CLI did not record one.
            "first_call_seconds": metrics.get("first_call_seconds"),
            "other_load": other_load.stop()}


def measure_cli(device, settings, data_root):
    """Yields (framework, {precision: figures}): each precision on a GPU, the chosen one on a
    CPU (float32 there either way)."""
    if device.kind == "gpu" and device.torch is not None:
        torch.cuda.empty_cache()  # what this process holds, for the CLI processes
    for framework in frameworks(device):
        runs = {}
        for precision in PRECISIONS if device.kind == "gpu" else (settings.precision,):
            status(f"[{device.kind}] CLI, {framework}, --precision {precision}")
            try:
                runs[precision] = cli_figures(framework, device, precision, settings, data_root)
            except (OSError, ValueError, KeyError, UsageError, subprocess.SubprocessError) as err:
                runs[precision] = {"error": describe_error(err)}
            yield framework, runs


def scaling_point(framework, count, device, steps, out_dir):
    """One real training run at global batch 256 on `count` processes (torchrun) / devices."""
    words = [sys.executable, "-m", f"{framework}_impl.train", "--max-steps", str(steps),
             "--no-progress", "--device", device, "--out-dir", str(out_dir)]
    env = {}
    if framework == "torch" and count > 1:
        env["GLOO_SOCKET_IFNAME"] = CLI_ENVIRONMENT.get("GLOO_SOCKET_IFNAME", "lo")
        words[1:2] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={count}",
                      "-m"]
    elif framework == "flax" and device == "cpu":
        env["XLA_FLAGS"] = (f"{CLI_ENVIRONMENT.get('XLA_FLAGS', '')} "
                            f"--xla_force_host_platform_device_count={count}").strip()
    elif framework == "flax":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(count)))
    status(f"scaling: {framework} on {count} {'processes' if framework == 'torch' else 'devices'}")
    metrics, _ = run_training_cli(words, out_dir, **env)
    return {"framework": framework, "count": count, "device": metrics["device"],
            "steps": metrics["steps"], "train_seconds": metrics["train_seconds"],
            "images_per_second": metrics["train_images_per_second"],
            "final_loss": metrics["step_losses"][-1]}


def measure_scaling(device, steps, counts):
    """Both frameworks on each count, in a scratch dir: the rows of scaling-<device>.json."""
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as scratch:
        return [scaling_point(framework, count, device, steps, Path(scratch) / f"{framework}-"
                              f"{count}") for framework in ("torch", "flax") for count in counts]

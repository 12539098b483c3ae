"""The epoch loop both frameworks share: batches, progress, checkpoints, evaluation, outputs.

Each framework supplies a `Hooks` of pure-ish functions (its `train_step`, `evaluate`, and the
conversion of its train state to and from canonical NumPy arrays); everything a user sees on
disk and on the terminal is produced here, once, so the two CLIs cannot drift apart.
"""

import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnist_common import data, loaders, reporting
from mnist_common.errors import UsageError
from mnist_common.fileio import write_text_atomic
from mnist_common.weights import load_arrays_file, save_arrays, save_weights

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"  # a one-line file naming the newest complete checkpoint directory


@dataclasses.dataclass
class Hooks:
    """What a framework plugs into `fit`."""

    framework: str  # "torch" or "flax"
    device: str  # human-readable device description
    versions: dict
    to_batch: Callable  # (images NCHW tensor, labels tensor) -> the framework's batch
    train_step: Callable  # (state, batch) -> (state, loss as float)
    evaluate: Callable  # (state, batches) -> {"loss", "accuracy", "correct", "examples"}
    state_to_arrays: Callable  # state -> (canonical params, optimizer arrays)
    state_from_arrays: Callable  # (state, params, optimizer arrays) -> state


def prepare_out_dir(out_dir):
    """Create `out_dir` (and parents) and check that files can be written into it."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out-dir {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out-dir {path}: cannot create it ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--out-dir {path}: not writable")
    return path


def _checkpoint_root(out_dir):
    return Path(out_dir) / CHECKPOINT_DIR


def save_checkpoint(out_dir, params, optimizer, progress):
    """Write a checkpoint directory, then point `latest` at it; a crash keeps the previous one."""
    root = _checkpoint_root(out_dir)
    root.mkdir(exist_ok=True)
    name = f"step-{progress['global_step']:07d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(tmp / "model.safetensors", params)
    save_arrays(tmp / "optimizer.safetensors", optimizer)
    write_text_atomic(tmp / "progress.json", json.dumps(progress) + "\n")
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_text_atomic(root / LATEST, name + "\n")
    _fsync_dir(root)
    for old in root.iterdir():  # older checkpoints and temp dirs of killed writers
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(out_dir):
    """Read the newest complete checkpoint: (params, optimizer arrays, progress dict)."""
    root = _checkpoint_root(out_dir)
    latest = root / LATEST
    if not latest.is_file():
        raise UsageError(f"--resume: no checkpoint in {out_dir} (expected {latest})")
    directory = root / latest.read_text().strip()
    try:
        progress = json.loads((directory / "progress.json").read_text())
        params = load_arrays_file(directory / "model.safetensors")
        optimizer = load_arrays_file(directory / "optimizer.safetensors")
    except (OSError, ValueError, UsageError) as err:
        raise UsageError(f"--resume: checkpoint {directory} is damaged ({err})") from None
    from mnist_common.weights import check_weights

    check_weights(params, directory / "model.safetensors")
    return params, optimizer, progress


def _resume_config_matches(config, progress):
    saved = progress["config"]
    for key in ("batch_size", "lr", "seed", "loader"):
        if saved[key] != getattr(config, key):
            raise UsageError(f"--resume: the checkpoint was made with --{key.replace('_', '-')} "
                             f"{saved[key]}, not {getattr(config, key)}")


def _epoch_record(epoch, step, train_loss, evaluation, seconds):
    return {"epoch": epoch, "step": step, "train_loss": train_loss,
            "test_loss": evaluation["loss"], "test_accuracy": evaluation["accuracy"],
            "test_correct": evaluation["correct"], "test_examples": evaluation["examples"],
            "train_seconds": seconds}


def fit(config, hooks, state):
    """Train `state` as `config` says, write the outputs, and return the metrics dict."""
    out_dir = prepare_out_dir(config.out_dir)
    root = data.prepare_data(config.data_dir, progress=config.progress)
    train_split = data.load_arrays(root, train=True)
    test_split = data.load_arrays(root, train=False)
    num_train = len(train_split[1])
    if config.batch_size > num_train:
        raise UsageError(f"--batch-size {config.batch_size} is larger than the training set "
                         f"({num_train} images)")
    steps_per_epoch = loaders.steps_per_epoch(num_train, config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "train_seconds": 0.0,
                "step_losses": [], "epochs": [], "config": dataclasses.asdict(config)}
    if config.resume:
        params, optimizer, saved = load_checkpoint(out_dir)
        _resume_config_matches(config, saved)
        state = hooks.state_from_arrays(state, params, optimizer)
        progress.update({k: saved[k] for k in
                         ("epoch", "step_in_epoch", "global_step", "train_seconds",
                          "step_losses", "epochs")})

    def checkpoint(current_state):
        params, optimizer = hooks.state_to_arrays(current_state)
        return save_checkpoint(out_dir, params, optimizer, progress)

    def evaluate_test():
        batches = loaders.eval_batches(test_split, loader=config.loader, root=root)
        return hooks.evaluate(state, (hooks.to_batch(x, y) for x, y in batches))

    bar = reporting.progress_bar(None, total=total_steps, desc=hooks.framework,
                                 enabled=config.progress, leave=True)
    bar.update(progress["global_step"])
    try:
        while progress["global_step"] < total_steps and progress["epoch"] < config.epochs:
            epoch = progress["epoch"]
            batches = loaders.train_batches(
                train_split, seed=config.seed, epoch=epoch, batch_size=config.batch_size,
                loader=config.loader, root=root, start_step=progress["step_in_epoch"])
            start = time.perf_counter()
            for images, labels in batches:
                new_state, loss = hooks.train_step(state, hooks.to_batch(images, labels))
                if not math.isfinite(loss):
                    raise UsageError(
                        f"training loss became {loss} at step {progress['global_step'] + 1} "
                        f"(epoch {epoch + 1}); stopped, the last good checkpoint in "
                        f"{_checkpoint_root(out_dir)} is kept")
                state = new_state
                progress["step_losses"].append(loss)
                progress["step_in_epoch"] += 1
                progress["global_step"] += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}", refresh=False)
                if progress["global_step"] >= total_steps:
                    break
            progress["train_seconds"] += time.perf_counter() - start
            epoch_done = progress["step_in_epoch"] >= steps_per_epoch
            if epoch_done or progress["global_step"] >= total_steps:
                evaluation = evaluate_test()
                done_in_epoch = progress["step_in_epoch"]
                losses = progress["step_losses"][-done_in_epoch:] if done_in_epoch else [math.nan]
                progress["epochs"].append(_epoch_record(
                    epoch + 1, progress["global_step"], float(np.mean(losses)), evaluation,
                    progress["train_seconds"]))
                if epoch_done:
                    progress["epoch"] += 1
                    progress["step_in_epoch"] = 0
                checkpoint(state)
    except KeyboardInterrupt:
        bar.close()
        checkpoint(state)
        print(f"\ninterrupted at step {progress['global_step']}; checkpoint saved. Resume with: "
              f"python -m {hooks.framework}_impl.train --resume --out-dir {out_dir} "
              f"(and the same other flags)", file=sys.stderr)
        raise SystemExit(130) from None
    bar.close()

    final = progress["epochs"][-1] if progress["epochs"] else None
    if final is None or final["step"] != progress["global_step"]:
        final = _epoch_record(progress["epoch"] + 1, progress["global_step"], math.nan,
                              evaluate_test(), progress["train_seconds"])
    params, _ = hooks.state_to_arrays(state)
    images_seen = sum(min(config.batch_size, num_train - (s % steps_per_epoch) * config.batch_size)
                      for s in range(progress["global_step"]))
    metrics = {
        "framework": hooks.framework,
        "versions": {**hooks.versions, "python": platform.python_version(),
                     "numpy": np.__version__},
        "device": hooks.device,
        "config": dataclasses.asdict(config),
        "steps": progress["global_step"],
        "epochs": progress["epochs"],
        "test_loss": final["test_loss"],
        "test_accuracy": final["test_accuracy"],
        "test_correct": final["test_correct"],
        "test_examples": final["test_examples"],
        "train_seconds": progress["train_seconds"],
        "train_images_per_second": images_seen / max(progress["train_seconds"], 1e-9),
        "step_losses": progress["step_losses"],
    }
    save_weights(out_dir / "model.safetensors", params)
    reporting.write_metrics(out_dir / "metrics.json", metrics)
    reporting.plot_losses(out_dir / "loss.png", metrics)
    print(reporting.summary_line(metrics))
    return metrics

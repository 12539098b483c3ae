"""The checkpoint store: `<out-dir>/checkpoints/step-NNNNNNN/`, and `latest` naming one.

A checkpoint holds the weights (`model.safetensors`), the Adam state (`optimizer.safetensors`)
and `progress.json`: step counts, per-step losses, epoch records, the run's config, and the
SHA-256 of every array file it needs. It is written into a temp dir, renamed into place, and
only then named by `latest` (itself replaced atomically), so a process killed at any point
leaves `latest` naming a complete checkpoint, or no `latest` at all.
"""

import json
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnist_common.architecture import CANONICAL_SHAPES
from mnist_common.config import cli_name
from mnist_common.errors import UsageError, first_line, short_path
from mnist_common.fileio import fsync_dir, sha256_file
from mnist_common.ownership import (
    RECORD_NAME,
    RECORD_TEMP,
    make_temp_dir,
    may_replace,
    remove_leftovers,
    remove_owned,
    rename_owned,
    write_owned,
)
from mnist_common.weights import check_weights, load_arrays_file, save_arrays, save_weights

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"  # a one-line file naming the newest complete checkpoint directory
CHECKPOINT_FORMAT = 1
ARRAY_FILES = ("model.safetensors", "optimizer.safetensors")  # each must be named and hashed
_CHECKPOINT_NAME = re.compile(r"step-\d{7,}(-\d+)?")
# Changing these changes the trajectory, so a resumed run must keep them.
RESUME_MUST_MATCH = ("batch_size", "lr", "seed")


class Checkpoint(NamedTuple):
    """A complete checkpoint as read back from disk."""

    params: dict  # canonical weights
    optimizer: dict  # Adam state: exp_avg.<key>, exp_avg_sq.<key>, step; {} before step 1
    progress: dict  # what progress.json says: steps, losses, epoch records, config
    path: Path  # its directory


def checkpoint_root(out_dir):
    """`<out_dir>/checkpoints`."""
    return Path(out_dir) / CHECKPOINT_DIR


def _live_name(root):
    """The directory name `latest` holds, if it is a well-formed one."""
    try:
        name = (root / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if _CHECKPOINT_NAME.fullmatch(name) else None


def save_checkpoint(out_dir, params, optimizer, progress):
    """Write a checkpoint directory, then point `latest` at it; a crash keeps the previous one.

    Returns the new checkpoint's directory. Only what `ownership.may_replace` allows is ever
    replaced or pruned: the store's own superseded checkpoints and killed writers' temp files.
    """
    root = checkpoint_root(out_dir)
    root.mkdir(exist_ok=True)
    remove_leftovers(root)
    live = _live_name(root)
    name = base = f"step-{progress['global_step']:07d}"
    suffix = 0
    # Never touch the directory `latest` names until it is superseded, nor one not ours.
    while name == live or not may_replace(root / name):
        suffix += 1
        name = f"{base}-{suffix}"
    tmp = make_temp_dir(root, f".{name}.tmp-")
    try:  # a full disk (or any failed write) leaves no temp dir behind
        save_weights(tmp / "model.safetensors", params)
        save_arrays(tmp / "optimizer.safetensors", optimizer)
        files = {f: sha256_file(tmp / f) for f in ARRAY_FILES}
        record = {**progress, "format": CHECKPOINT_FORMAT, "files": files}
        write_owned(tmp / "progress.json", json.dumps(record) + "\n")
        fsync_dir(tmp)
    except BaseException:
        remove_owned(tmp)
        raise
    final = root / name
    rename_owned(tmp, final)  # replaces one left by a writer killed before it updated `latest`
    fsync_dir(root)
    write_owned(root / LATEST, name + "\n")  # the commit point
    fsync_dir(root)
    for entry in root.iterdir():  # the superseded checkpoint; what is not ours stays
        if entry.name not in (name, LATEST, RECORD_NAME, RECORD_TEMP):
            remove_owned(entry)
    return final


def refuse_unusable_store(out_dir):
    """Before any work: `checkpoints` must be a folder (or absent), and one reached through a
    link must be empty or hold this out-dir's own run: another run's store is not this run's to
    prune or repoint."""
    root = checkpoint_root(out_dir)
    if not os.path.lexists(root):
        return
    where = f"--out-dir {short_path(out_dir)}: {short_path(root)}"
    if not root.is_dir():
        raise UsageError(f"{where} exists and is not a directory; move it away or choose "
                         f"another --out-dir")
    if not root.is_symlink() or not [
            p for p in root.iterdir() if p.name not in (RECORD_NAME, RECORD_TEMP)]:
        return
    try:
        saved_by = load_checkpoint(out_dir).progress["config"].get("out_dir")
    except UsageError:
        saved_by = None
    if saved_by is None or Path(saved_by).resolve() != Path(out_dir).resolve():
        raise UsageError(f"{where} links to {short_path(root.resolve())}, which holds another "
                         f"run's checkpoints (or files of no run of this --out-dir); link to an "
                         f"empty folder, or choose another --out-dir")


def refuse_unowned_pointer(out_dir):
    """A `checkpoints/latest` the project did not write is the user's: never replaced."""
    latest = checkpoint_root(out_dir) / LATEST
    if not may_replace(latest):
        raise UsageError(f"{latest} is not a checkpoint pointer of this project; move it away "
                         f"or choose another --out-dir")


def _check_progress(progress):
    """Raise ValueError unless `progress` has the fields and types `fit` relies on."""
    if not isinstance(progress, dict) or progress.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("progress.json is not a version-1 checkpoint record")
    for key in ("epoch", "step_in_epoch", "global_step", "target_steps"):
        value = progress.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"progress.json: {key} is {value!r}")
    if not isinstance(progress.get("framework"), str):
        raise ValueError("progress.json: no framework")
    losses = progress.get("step_losses")
    if not isinstance(losses, list) or len(losses) != progress["global_step"]:
        raise ValueError("progress.json: step_losses does not hold one loss per step")
    if not all(isinstance(x, float) and math.isfinite(x) for x in losses):
        raise ValueError("progress.json: step_losses holds a value that is not a finite number")
    if not isinstance(progress.get("epochs"), list) or len(progress["epochs"]) != progress["epoch"]:
        raise ValueError("progress.json: epochs does not hold one record per finished epoch")
    if not isinstance(progress.get("train_seconds"), (int, float)):
        raise ValueError("progress.json: train_seconds is missing")
    config = progress.get("config")
    if not isinstance(config, dict) or any(k not in config for k in RESUME_MUST_MATCH):
        raise ValueError("progress.json: the run's config is missing")
    files = progress.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(ARRAY_FILES) or not all(
            isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in files.values()):
        raise ValueError(f"progress.json does not name and hash every file a checkpoint needs "
                         f"({', '.join(ARRAY_FILES)})")


def _check_optimizer(optimizer, global_step):
    """Raise ValueError unless `optimizer` is the Adam state of a run at `global_step`."""
    if not optimizer:
        if global_step:
            raise ValueError("optimizer.safetensors is empty but the run has taken steps")
        return
    expected = {"step": (1,)}
    for key, shape in CANONICAL_SHAPES.items():
        expected[f"exp_avg.{key}"] = expected[f"exp_avg_sq.{key}"] = shape
    if set(optimizer) != set(expected):
        raise ValueError("optimizer.safetensors does not hold this model's Adam state")
    for key, shape in expected.items():
        if tuple(optimizer[key].shape) != shape or not np.isfinite(optimizer[key]).all():
            raise ValueError(f"optimizer.safetensors: {key} has the wrong shape or non-finite "
                             f"values")
    if float(optimizer["step"][0]) != global_step:
        raise ValueError(f"optimizer.safetensors is at step {float(optimizer['step'][0]):g}, "
                         f"progress.json at step {global_step}")


def load_checkpoint(out_dir):
    """Read the checkpoint `latest` names, verified; a missing or damaged one is a UsageError."""
    root = checkpoint_root(out_dir)
    latest = root / LATEST
    if not latest.is_file():
        raise UsageError(f"no checkpoint in {out_dir} (expected {latest})")
    name = _live_name(root)
    if name is None:
        raise UsageError(f"checkpoint pointer {latest} is damaged (it does not name a "
                         f"step-NNNNNNN directory)")
    return read_checkpoint(root / name)


def read_checkpoint(directory):
    """Read and verify the checkpoint in `directory`; a damaged one is a UsageError."""
    try:
        progress = json.loads((directory / "progress.json").read_text())
        _check_progress(progress)
        for file, digest in progress["files"].items():
            if sha256_file(directory / file) != digest:
                raise ValueError(f"{file} does not match the SHA-256 recorded in progress.json")
        params = load_arrays_file(directory / "model.safetensors")
        optimizer = load_arrays_file(directory / "optimizer.safetensors")
        check_weights(params, directory / "model.safetensors")
        if not all(np.isfinite(params[k]).all() for k in CANONICAL_SHAPES):
            raise ValueError("model.safetensors holds NaN or infinite weights")
        _check_optimizer(optimizer, progress["global_step"])
    except (OSError, ValueError, UsageError) as err:
        reason = first_line(err)
        if isinstance(err, OSError) and err.strerror:
            reason = f"{err.filename}: {err.strerror}"
        raise UsageError(f"checkpoint {directory} is damaged ({reason})") from None
    return Checkpoint(params, optimizer, progress, directory)


def load_checkpoint_at(path):
    """The checkpoint `--resume-from PATH` names: a run dir, its checkpoints/ dir, one
    step-NNNNNNN checkpoint dir or its progress.json; either framework's."""
    path = Path(path)
    if path.is_file() and path.name == "progress.json":
        path = path.parent
    if (path / "progress.json").is_file():
        return read_checkpoint(path)
    if (path / LATEST).is_file():
        return load_checkpoint(path.parent)
    if (checkpoint_root(path) / LATEST).is_file():
        return load_checkpoint(path)
    what = "does not exist" if not path.exists() else "holds no checkpoint"
    raise UsageError(f"{path} {what} (expected a run's --out-dir, its {CHECKPOINT_DIR}/ "
                     f"directory, a step-NNNNNNN checkpoint or its progress.json)")


def check_resume(config, framework, progress, checkpoint_dir):
    """A resumed run must be the same framework and keep what shapes the trajectory."""
    if progress["framework"] != framework:
        raise UsageError(f"--resume: {checkpoint_dir} was written by "
                         f"{cli_name(progress['framework'])}; resume it with that")
    mismatch = _first_mismatch(config, progress["config"])
    if mismatch:
        flag, saved, given = mismatch
        raise UsageError(f"--resume: the checkpoint was made with {flag} {saved}, "
                         f"not {given}; resume with {flag} {saved}")


def check_carry(config, progress, checkpoint_dir):
    """A run continued from another run's checkpoint (of either framework) keeps what shapes
    the trajectory."""
    mismatch = _first_mismatch(config, progress["config"])
    if mismatch:
        flag, saved, given = mismatch
        raise UsageError(f"--resume-from: {checkpoint_dir} was made with {flag} {saved}, "
                         f"not {given}; pass {flag} {saved}")


def _first_mismatch(config, saved):
    """(flag, saved value, given value) of the first flag that shapes the trajectory and
    differs from the checkpoint's run, or None."""
    for key in RESUME_MUST_MATCH:
        if saved[key] != getattr(config, key):
            return "--" + key.replace("_", "-"), saved[key], getattr(config, key)
    return None

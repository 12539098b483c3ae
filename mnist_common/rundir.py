"""The output directory of a training run: created only when needed, locked, never clobbered.

A run refuses an `--out-dir` that another run is using (a lock), that holds an unfinished run's
checkpoint (resume it instead), or that holds a finished run of the other framework or of other
flags (unless `--overwrite`): a finished result is not lost by accident. Rerunning the same
command, as `make train` twice does, simply trains again.
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from mnist_common.checkpoints import LATEST, RESUME_MUST_MATCH, checkpoint_root, load_checkpoint
from mnist_common.config import program
from mnist_common.errors import UsageError
from mnist_common.fileio import exclusive_lock, remove_stale

LOCK_NAME = ".train.lock"  # held (flock) by the run using an --out-dir
OUTPUTS = ("model.safetensors", "metrics.json", "loss.png")
# Flags that change what a finished run's outputs mean; the rest (device, loader, progress) do not.
_SAME_RUN = (*RESUME_MUST_MATCH, "epochs", "max_steps")


def prepare_out_dir(out_dir):
    """Create `out_dir` (and parents) and check, by writing a file, that files fit into it.

    Returns (path, whether this call created it).
    """
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out-dir {path}: exists and is not a directory")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"--out-dir {path}: a parent of it is not a directory") from None
    except OSError as err:
        raise UsageError(f"--out-dir {path}: cannot create it ({err.strerror})") from None
    try:  # a real write: os.access says yes to root even on a read-only mount
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise UsageError(f"--out-dir {path}: not writable ({err.strerror})") from None
    return path, created


@contextlib.contextmanager
def locked(out_dir, created):
    """Hold `<out_dir>/.train.lock` for the run; a second run in the same dir is an error.

    If this run created `out_dir` and fails before writing anything into it, the directory is
    removed again: an early error leaves no litter.
    """
    try:
        with exclusive_lock(Path(out_dir) / LOCK_NAME):
            for name in OUTPUTS:  # temp files of output writes that were killed
                remove_stale(out_dir, f".{name}.*.tmp")
            yield
    except BlockingIOError:
        raise UsageError(f"--out-dir {out_dir}: another training run is using it") from None
    except BaseException:
        if created and {p.name for p in Path(out_dir).iterdir()} <= {LOCK_NAME}:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _finished_run(out_dir):
    """What metrics.json says of the finished run in `out_dir`, or None."""
    try:
        metrics = json.loads((Path(out_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def refuse_to_replace(out_dir, config, framework):
    """A fresh run must not silently discard an unfinished run or another run's results."""
    _refuse_unfinished(out_dir)
    if config.overwrite:
        return
    finished = _finished_run(out_dir)
    if finished is None:
        return
    other = finished.get("framework")
    hint = "pass --overwrite to replace it, or choose another --out-dir"
    if other != framework:
        raise UsageError(f"--out-dir {out_dir} holds a finished run of {program(other)}; {hint}")
    saved = finished.get("config") or {}
    for key in _SAME_RUN:
        if key in saved and saved[key] != getattr(config, key):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"--out-dir {out_dir} holds a finished run made with {flag} "
                             f"{saved[key]}, not {getattr(config, key)}; {hint}")


def _refuse_unfinished(out_dir):
    if not (checkpoint_root(out_dir) / LATEST).exists():
        return
    try:
        progress = load_checkpoint(out_dir).progress
    except UsageError:
        return  # a damaged checkpoint cannot be resumed: nothing is lost by replacing it
    if progress["global_step"] < progress["target_steps"]:
        raise UsageError(
            f"--out-dir {out_dir} holds the checkpoint of an unfinished run (step "
            f"{progress['global_step']} of {progress['target_steps']}); continue it with "
            f"`{program(progress['framework'])} --resume --out-dir {out_dir}` "
            f"and its flags, or delete {checkpoint_root(out_dir)} to start over")

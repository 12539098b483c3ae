"""The output directory of a training run: created only when needed, locked, never clobbered.

A run writes beside whatever else the directory holds, and replaces or deletes only what a run
of this project wrote there: its outputs as recorded in `.run-files.json`
(`mnist_common.ownership`), and its own checkpoints (`mnist_common.checkpoints`). It refuses
an `--out-dir` that another run is using (a lock), that holds an output name it did not write,
that holds an unfinished run's checkpoint (resume it instead), or that holds a finished run of
the other framework or of other flags (unless `--overwrite`): a finished result is not lost by
accident. Rerunning the same command, as `make train` twice does, simply trains again.
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path

from mnist_common.checkpoints import (
    RESUME_MUST_MATCH,
    checkpoint_root,
    load_checkpoint,
    refuse_foreign_pointer,
)
from mnist_common.config import FRAMEWORKS, program
from mnist_common.errors import UsageError, shown
from mnist_common.fileio import check_path, exclusive_lock, remove_stale
from mnist_common.ownership import RECORD_NAME, refuse_foreign
from mnist_common.reporting import OUTPUTS

LOCK_NAME = ".train.lock"  # held (flock) by the run using an --out-dir
# Flags that change what a finished run's outputs mean; the rest (device, loader, progress) do not.
_SAME_RUN = (*RESUME_MUST_MATCH, "epochs", "max_steps")


def prepare_out_dir(out_dir):
    """Create `out_dir` (and parents) and check, by writing a file, that files fit into it.

    Returns (path, the directories this call created, outermost first).
    """
    path = Path(out_dir)
    check_path(path, "--out-dir")
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out-dir {path}: exists and is not a directory")
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    created = []
    try:
        for directory in missing:
            directory.mkdir()
            created.append(directory)
    except (FileExistsError, NotADirectoryError):
        remove_created(created)
        raise UsageError(f"--out-dir {path}: a parent of it is not a directory") from None
    except OSError as err:
        remove_created(created)
        raise UsageError(f"--out-dir {shown(path)}: cannot create it ({err.strerror})") from None
    try:  # a real write: os.access says yes to root even on a read-only mount
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        remove_created(created)
        raise UsageError(f"--out-dir {path}: not writable ({err.strerror})") from None
    return path, created


def remove_created(created):
    """Remove the directories a failed run created, innermost first, as far as they are empty."""
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def locked(out_dir, created):
    """Hold `<out_dir>/.train.lock` for the run; a second run in the same dir is an error.

    `created`: the directories `prepare_out_dir` created. If the run fails before writing
    anything, the lock file (if this run made it) and those directories are removed again:
    an early error leaves no litter.
    """
    lock = Path(out_dir) / LOCK_NAME
    new_lock = not os.path.lexists(lock)  # a link there is the user's, even a dangling one
    try:
        with exclusive_lock(lock):
            for name in (*OUTPUTS, RECORD_NAME):  # temp files of output writes that were killed
                remove_stale(out_dir, f".{name}.*.tmp")
            yield
    except BlockingIOError:
        raise UsageError(f"--out-dir {out_dir}: another training run is using it") from None
    except BaseException:
        if new_lock:
            with contextlib.suppress(OSError):
                lock.unlink()
        remove_created(created)
        raise


def is_run_record(metrics):
    """Whether `metrics` (parsed JSON) is a training run's metrics.json."""
    return (isinstance(metrics, dict) and metrics.get("framework") in FRAMEWORKS
            and isinstance(metrics.get("config"), dict) and isinstance(metrics.get("epochs"), list)
            and isinstance(metrics.get("step_losses"), list))


def _finished_run(out_dir):
    """What metrics.json says of the finished run in `out_dir`, or None."""
    try:
        metrics = json.loads((Path(out_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if is_run_record(metrics) else None


def refuse_foreign_outputs(out_dir):
    """Refuse a run dir holding an output name (or checkpoint pointer) a run did not write."""
    refuse_foreign(out_dir, OUTPUTS, f"--out-dir {out_dir}")
    refuse_foreign_pointer(out_dir)


def refuse_to_replace(out_dir, config, framework):
    """A fresh run must not silently discard an unfinished run or another run's results."""
    refuse_foreign_outputs(out_dir)
    _refuse_unfinished(out_dir)
    if config.overwrite:
        return
    finished = _finished_run(out_dir)
    if finished is None:
        return
    other = finished["framework"]
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
    try:
        progress = load_checkpoint(out_dir).progress
    except UsageError:
        return  # none, or a damaged one: it cannot be resumed: nothing is lost by replacing it
    if progress["global_step"] < progress["target_steps"]:
        raise UsageError(
            f"--out-dir {out_dir} holds the checkpoint of an unfinished run (step "
            f"{progress['global_step']} of {progress['target_steps']}); continue it with "
            f"`{program(progress['framework'])} --resume --out-dir {out_dir}` "
            f"and its flags, or delete {checkpoint_root(out_dir)} to start over")

"""A training run's directory, behind the few verbs the loop calls: the guard rails' one seam.

`open_run` checks the flags against the disk (the checkpoint to resume or carry, an unfinished
or other run in the way) before it creates anything, creates the `--out-dir` late, locks it and
yields a `Run`: `restore` continues from the checkpoint, `save_checkpoint` writes one through
the store (`mnist_common.checkpoints`), `stop_requested` says whether Ctrl-C or SIGTERM asked
for a stop (taken between two dispatches of steps), `stop` saves and exits, `publish` writes
the outputs. A run replaces or deletes only what `mnist_common.ownership` (the one rule) says
the project wrote: it refuses an `--out-dir` another run is using (a lock), that holds an
output name it did not write, an unfinished run's checkpoint (resume it instead), or a
finished run of the other framework or of other flags (unless `--overwrite`). Rerunning the
same command, as `make train` twice does, simply trains again.
"""

import contextlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np

from mnist_common.architecture import CANONICAL_SHAPES
from mnist_common.checkpoints import (
    LATEST,
    RESUME_MUST_MATCH,
    check_carry,
    check_resume,
    checkpoint_root,
    load_checkpoint,
    load_checkpoint_at,
    refuse_unowned_pointer,
    refuse_unusable_store,
    save_checkpoint,
)
from mnist_common.config import FRAMEWORKS, cli_name, resume_command
from mnist_common.errors import UsageError, short_path
from mnist_common.fileio import check_path, exclusive_lock, say
from mnist_common.ownership import refuse_unowned, remove_leftovers, remove_owned
from mnist_common.publishing import finish_interrupted, stage, swap_in
from mnist_common.reporting import OUTPUTS, summary_line

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
        raise UsageError(f"--out-dir {short_path(path)}: cannot create it "
                         f"({err.strerror})") from None
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
            yield
    except BlockingIOError:
        raise UsageError(f"--out-dir {out_dir}: another training run is using it") from None
    except BaseException:
        if new_lock:
            with contextlib.suppress(OSError):
                lock.unlink()
        remove_created(created)
        raise


def _finished_run(out_dir):
    """What metrics.json says of the finished run in `out_dir`, or None."""
    try:
        metrics = json.loads((Path(out_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if (isinstance(metrics, dict) and metrics.get("framework") in FRAMEWORKS
            and isinstance(metrics.get("config"), dict) and isinstance(metrics.get("epochs"), list)
            and isinstance(metrics.get("step_losses"), list)):
        return metrics
    return None


def _refuse_unowned_outputs(out_dir):
    """Refuse a run dir holding an output name (or checkpoint pointer) a run did not write."""
    refuse_unowned(out_dir, OUTPUTS, f"--out-dir {out_dir}", "a run of this project")
    refuse_unowned_pointer(out_dir)


def _refuse_to_replace(out_dir, config, framework):
    """A fresh run must not silently discard an unfinished run or another run's results."""
    _refuse_unowned_outputs(out_dir)
    _refuse_unfinished(out_dir)
    if config.overwrite:
        return
    finished = _finished_run(out_dir)
    if finished is None:
        return
    other = finished["framework"]
    hint = "pass --overwrite to replace it, or choose another --out-dir"
    if other != framework:
        raise UsageError(f"--out-dir {out_dir} holds a finished run of {cli_name(other)}; {hint}")
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
            f"`{cli_name(progress['framework'])} --resume --out-dir {out_dir}` "
            f"and its flags, or delete {checkpoint_root(out_dir)} to start over")


def _checkpoint_to_continue(config, framework):
    """The checkpoint `--resume` or `--resume-from` names, checked against the flags; or None."""
    if config.resume:
        latest = checkpoint_root(config.out_dir) / LATEST
        if not latest.is_file():
            raise UsageError(f"--resume: no checkpoint in {config.out_dir} (expected {latest})")
        try:
            resumed = load_checkpoint(config.out_dir)
        except UsageError as err:
            raise UsageError(f"--resume: {err}") from None
        check_resume(config, framework, resumed.progress, resumed.path)
        return resumed
    if config.resume_from is None:
        return None
    try:
        carried = load_checkpoint_at(config.resume_from)
    except UsageError as err:
        raise UsageError(f"--resume-from: {err}") from None
    check_carry(config, carried.progress, carried.path)
    return carried


@contextlib.contextmanager
def open_run(config, framework, writer=True):
    """The run directory of `config.out_dir`, checked, created and locked: yields a `Run`.

    `writer`: False in the processes of a data-parallel run that only read (rank > 0): they
    create, lock and write nothing.
    """
    if writer:
        refuse_unusable_store(config.out_dir)
    resumed = _checkpoint_to_continue(config, framework)
    if not writer:
        yield Run(config, framework, None, resumed)
        return
    out_dir, created = prepare_out_dir(config.out_dir)
    with locked(out_dir, created):
        finish_interrupted(out_dir)  # a set of outputs a killed run staged whole goes in first
        if config.resume:
            _refuse_unowned_outputs(out_dir)
        else:
            _refuse_to_replace(out_dir, config, framework)
        remove_leftovers(out_dir)  # temp files of output writes that were killed (recorded)
        yield Run(config, framework, out_dir, resumed)


class StopRequests:
    """SIGINT/SIGTERM handlers that ask the loop to stop at the next step boundary.

    A step interrupted half-way (torch updates its weights in place) would leave a state that
    matches no step count, so the signal only sets a flag. A second signal gets the previous
    handler: Ctrl-C twice quits at once, keeping the last complete checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._request)
        return self

    def __exit__(self, *exc_info):
        self._restore()

    def _request(self, signum, frame):
        self.signum = signum
        self._restore()

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class Run:
    """An open run directory (None in a process that only reads): the verbs the loop calls."""

    def __init__(self, config, framework, out_dir, resumed):
        self.config, self.framework, self.out_dir = config, framework, out_dir
        self.writer = out_dir is not None
        self.resumed = resumed  # the checkpoint to continue from, or None
        self.saved_step = None  # the step of this run's newest checkpoint on disk
        self.steps_per_epoch = None
        self.stop_requests = StopRequests()

    def say(self, message):
        """A status line, from the one process that prints."""
        if self.writer:
            say(message)

    def position(self, progress):
        """Where a run stands, as messages say it."""
        return (f"step {progress['global_step']} (epoch {progress['epoch'] + 1}, batch "
                f"{progress['step_in_epoch']} of {self.steps_per_epoch})")

    def last_checkpoint_note(self):
        """A sentence on the newest checkpoint of this run, for a message that stops it."""
        if self.saved_step is None:
            return "no checkpoint was written"
        return (f"the last good checkpoint (step {self.saved_step}) is kept in "
                f"{checkpoint_root(self.out_dir or self.config.out_dir)}")

    def restore(self, progress, steps_per_epoch):
        """Continue from the checkpoint, if any: its counts into `progress`; returns its
        (weights, Adam state) for the engine, or None for a fresh start."""
        self.steps_per_epoch = steps_per_epoch
        if self.resumed is None:
            return None
        saved, path = self.resumed.progress, self.resumed.path
        flag = "--resume" if self.config.resume else "--resume-from"
        if saved["global_step"] != saved["epoch"] * steps_per_epoch + saved["step_in_epoch"] \
                or saved["step_in_epoch"] >= steps_per_epoch:
            raise UsageError(f"{flag}: checkpoint {path} is damaged (its step counts do not fit "
                             f"{steps_per_epoch} steps per epoch)")
        if saved["global_step"] > progress["target_steps"]:
            config = self.config
            raise UsageError(
                f"{flag}: the checkpoint is at step {saved['global_step']}, past the "
                f"{progress['target_steps']} steps that --epochs {config.epochs}"
                f"{f' and --max-steps {config.max_steps}' if config.max_steps else ''} ask "
                f"for; raise them (or drop --max-steps) to train further")
        for key in ("epoch", "step_in_epoch", "global_step", "train_seconds", "step_losses",
                    "epochs"):
            progress[key] = saved[key]
        # A checkpoint of another run is not one of this run: the first save writes one here.
        self.saved_step = saved["global_step"] if self.config.resume else None
        return self.resumed.params, self.resumed.optimizer

    def announce(self, progress, device):
        """The run's first status line: what it trains, from where, on `device`."""
        step, total = progress["global_step"], progress["target_steps"]
        if self.resumed is None:
            self.say(f"{self.framework}: training {total} steps ({self.steps_per_epoch} per "
                     f"epoch, batch size {self.config.batch_size}) on {device}")
        elif step < total:
            self.say(f"{self.framework}: resuming from {self.resumed.path} after "
                     f"{self.position(progress)}, training to step {total}")
        else:
            self.say(f"{self.framework}: the checkpoint in {self.resumed.path} is already at "
                     f"step {total}; nothing to train, re-evaluating and rewriting the outputs")

    def save_checkpoint(self, arrays, progress):
        """Save (weights, Adam state) at `progress`, unless this step is saved already."""
        if self.saved_step == progress["global_step"]:
            return
        params, optimizer = arrays
        bad = [k for k in CANONICAL_SHAPES if not np.isfinite(params[k]).all()]
        if bad:
            raise UsageError(f"the weights ({bad[0]}) became NaN or infinite by step "
                             f"{progress['global_step']}; stopped, {self.last_checkpoint_note()}; "
                             f"try a smaller --lr")
        try:
            if self.writer:
                save_checkpoint(self.out_dir, params, optimizer, progress)
        except OSError as err:
            raise UsageError(f"cannot write a checkpoint into {checkpoint_root(self.out_dir)} "
                             f"({err.strerror or err}); {self.last_checkpoint_note()}") from None
        self.saved_step = progress["global_step"]

    def catching_stops(self):
        """A block in which Ctrl-C and SIGTERM only ask for a stop (`stop_requested`)."""
        return self.stop_requests

    def stop_requested(self):
        """Whether Ctrl-C or SIGTERM asked this process to stop."""
        return self.stop_requests.signum is not None

    def stop(self, arrays, progress):
        """Save a checkpoint, say how to resume, and exit 128 + the signal (SIGTERM when
        another process of the run asked)."""
        signum = self.stop_requests.signum or signal.SIGTERM
        self.save_checkpoint(arrays, progress)
        self.say(f"{cli_name(self.framework)}: {signal.Signals(signum).name} after "
                 f"{self.position(progress)}; checkpoint saved in "
                 f"{checkpoint_root(self.out_dir)}. Resume with: "
                 f"{resume_command(self.framework, self.config)}")
        raise SystemExit(128 + signum)

    def publish(self, params, metrics):
        """Publish model.safetensors, loss.png and metrics.json as one set (`publishing`); print
        the summary line."""
        if not self.writer:
            return
        try:  # a file put in place of an output while the run trained is the user's
            _refuse_unowned_outputs(self.out_dir)
        except UsageError as err:
            raise UsageError(f"{err} (the run is kept in {checkpoint_root(self.out_dir)}: "
                             f"{resume_command(self.framework, self.config)} writes the "
                             f"outputs)") from None
        with StopRequests() as requests:  # Ctrl-C waits for the set to be staged
            try:
                staging = stage(self.out_dir, params, metrics)
            except OSError as err:
                raise UsageError(f"cannot write the outputs into {self.out_dir} "
                                 f"({err.strerror or err}); the earlier ones are kept") from None
            if requests.signum is not None:
                remove_owned(staging)
                self.say(f"{cli_name(self.framework)}: {signal.Signals(requests.signum).name} "
                         f"while writing the outputs; the earlier outputs (if any) are kept, the "
                         f"run is in {checkpoint_root(self.out_dir)}. Write the outputs with: "
                         f"{resume_command(self.framework, self.config)}")
                raise SystemExit(128 + requests.signum)
            swap_in(self.out_dir, staging)  # renames only: a signal now waits for them
        print(summary_line(metrics))

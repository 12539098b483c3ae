"""The epoch loop both frameworks share: batches, progress, checkpoints, evaluation, outputs.

Each framework supplies a `Hooks` of pure-ish functions (its `train_step`, `evaluate`, and the
conversion of its train state to and from canonical NumPy arrays); everything a user sees on
disk and on the terminal is produced here, once, so the two CLIs cannot drift apart.

Checkpoints live in `<out-dir>/checkpoints/step-NNNNNNN/` (weights, Adam state, progress.json
with the SHA-256 of both array files); the one-line file `checkpoints/latest` names the newest
complete one. A checkpoint is written into a temp dir, renamed into place, and only then named
by `latest` (itself replaced atomically), so a process killed at any point leaves `latest`
naming a complete checkpoint, or no `latest` at all. One is written at the end of every epoch,
when `--max-steps` stops a run, and on Ctrl-C / SIGTERM, which take effect between two steps.
The training order of epoch e is a pure function of (seed, e), so `--resume` replays exactly
the batches the uninterrupted run would have seen: on one CPU both runs are bit-identical.
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnist_common import data, loaders, reporting
from mnist_common.config import Config
from mnist_common.errors import UsageError
from mnist_common.fileio import fsync_dir, write_text_atomic
from mnist_common.weights import (
    CANONICAL_SHAPES,
    check_weights,
    load_arrays_file,
    save_arrays,
    save_weights,
)

try:
    import fcntl
except ImportError:  # not POSIX: two runs in one --out-dir are then not detected
    fcntl = None

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"  # a one-line file naming the newest complete checkpoint directory
LOCK_NAME = ".train.lock"  # held (flock) by the run using an --out-dir
CHECKPOINT_FORMAT = 1
_CHECKPOINT_NAME = re.compile(r"step-\d{7,}(-\d+)?")
_OUTPUTS = ("model.safetensors", "metrics.json", "loss.png")
# Changing these changes the trajectory, so a resumed run must keep them.
_RESUME_MUST_MATCH = ("batch_size", "lr", "seed")


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
    # Data-parallel runs: only the writer (rank / process 0) writes files and talks; every
    # process must stop at the same step, so a stop request is agreed on (any -> all).
    writer: bool = True
    agree_stop: Callable = bool  # (this process wants to stop) -> (all processes stop)


class Checkpoint(NamedTuple):
    """A complete checkpoint as read back from disk."""

    params: dict  # canonical weights
    optimizer: dict  # Adam state: exp_avg.<key>, exp_avg_sq.<key>, step; {} before step 1
    progress: dict  # what progress.json says: steps, losses, epoch records, config
    path: Path  # its directory


# --- the output directory -----------------------------------------------------------------------


def prepare_out_dir(out_dir):
    """Create `out_dir` (and parents) and check, by writing a file, that files fit into it."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out-dir {path}: exists and is not a directory")
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
        raise UsageError(f"--out-dir {path}: not writable ({err.strerror})") from None
    return path


@contextlib.contextmanager
def out_dir_lock(out_dir):
    """Hold `<out_dir>/.train.lock` for the run; a second run in the same dir is an error."""
    if fcntl is None:
        yield
        return
    fd = os.open(Path(out_dir) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"--out-dir {out_dir}: another training run is using it") from None
        yield
    finally:
        os.close(fd)  # releases the lock; the kernel releases it too if the process is killed


def _remove_stale_temp_files(out_dir):
    """Temp files of output writes that were killed (safe: we hold the lock)."""
    for name in _OUTPUTS:
        for stale in Path(out_dir).glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()


# --- checkpoints --------------------------------------------------------------------------------


def checkpoint_root(out_dir):
    """`<out_dir>/checkpoints`."""
    return Path(out_dir) / CHECKPOINT_DIR


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _live_name(root):
    """The directory name `latest` holds, if it is a well-formed one."""
    try:
        name = (root / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if _CHECKPOINT_NAME.fullmatch(name) else None


def save_checkpoint(out_dir, params, optimizer, progress):
    """Write a checkpoint directory, then point `latest` at it; a crash keeps the previous one.

    Returns the new checkpoint's directory.
    """
    root = checkpoint_root(out_dir)
    root.mkdir(exist_ok=True)
    live = _live_name(root)
    name = base = f"step-{progress['global_step']:07d}"
    suffix = 0
    while name == live:  # never touch the directory `latest` names until it is superseded
        suffix += 1
        name = f"{base}-{suffix}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(tmp / "model.safetensors", params)
    save_arrays(tmp / "optimizer.safetensors", optimizer)
    files = {f: _sha256(tmp / f) for f in ("model.safetensors", "optimizer.safetensors")}
    record = {**progress, "format": CHECKPOINT_FORMAT, "files": files}
    write_text_atomic(tmp / "progress.json", json.dumps(record) + "\n")
    fsync_dir(tmp)
    final = root / name
    if final.exists():  # left by a writer killed before it updated `latest`: not trusted
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    write_text_atomic(root / LATEST, name + "\n")  # the commit point
    fsync_dir(root)
    for entry in root.iterdir():  # the superseded checkpoint and litter of killed writers
        if entry.name in (name, LATEST):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    return final


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
    if not isinstance(config, dict) or any(k not in config for k in _RESUME_MUST_MATCH):
        raise ValueError("progress.json: the run's config is missing")
    if not isinstance(progress.get("files"), dict):
        raise ValueError("progress.json: the file hashes are missing")


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
    directory = root / name
    try:
        progress = json.loads((directory / "progress.json").read_text())
        _check_progress(progress)
        for file, digest in progress["files"].items():
            if _sha256(directory / file) != digest:
                raise ValueError(f"{file} does not match the SHA-256 recorded in progress.json")
        params = load_arrays_file(directory / "model.safetensors")
        optimizer = load_arrays_file(directory / "optimizer.safetensors")
        check_weights(params, directory / "model.safetensors")
        if not all(np.isfinite(params[k]).all() for k in CANONICAL_SHAPES):
            raise ValueError("model.safetensors holds NaN or infinite weights")
        _check_optimizer(optimizer, progress["global_step"])
    except (OSError, ValueError, UsageError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, OSError) and err.strerror:
            reason = f"{err.filename}: {err.strerror}"
        raise UsageError(f"checkpoint {directory} is damaged ({reason})") from None
    return Checkpoint(params, optimizer, progress, directory)


def _check_resume(config, framework, progress, checkpoint_dir):
    """A resumed run must be the same framework and keep what shapes the trajectory."""
    if progress["framework"] != framework:
        raise UsageError(f"--resume: {checkpoint_dir} was written by "
                         f"python -m {progress['framework']}_impl.train; resume it with that")
    saved = progress["config"]
    for key in _RESUME_MUST_MATCH:
        if saved[key] != getattr(config, key):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"--resume: the checkpoint was made with {flag} {saved[key]}, "
                             f"not {getattr(config, key)}; resume with {flag} {saved[key]}")


def _refuse_to_replace_unfinished(out_dir):
    """A fresh run must not silently discard the checkpoint of an unfinished run."""
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
            f"`python -m {progress['framework']}_impl.train --resume --out-dir {out_dir}` "
            f"and its flags, or delete {checkpoint_root(out_dir)} to start over")


def resume_command(framework, config):
    """The command line that continues the run `config` describes."""
    defaults = Config()
    words = ["python", "-m", f"{framework}_impl.train", "--resume", "--out-dir",
             str(config.out_dir)]
    for field in ("epochs", "batch_size", "lr", "seed", "device", "data_dir", "loader",
                  "max_steps"):
        value = getattr(config, field)
        if value is not None and value != getattr(defaults, field):
            words += ["--" + field.replace("_", "-"), str(value)]
    if not config.progress:
        words.append("--no-progress")
    return shlex.join(words)


# --- stopping between steps ---------------------------------------------------------------------


class _StopRequests:
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


# --- the loop -----------------------------------------------------------------------------------


def _epoch_record(epoch, step, train_loss, evaluation, seconds, partial=False):
    return {"epoch": epoch, "step": step, "partial": partial, "train_loss": train_loss,
            "test_loss": evaluation["loss"], "test_accuracy": evaluation["accuracy"],
            "test_correct": evaluation["correct"], "test_examples": evaluation["examples"],
            "train_seconds": seconds}


def _say(message):
    print(message, file=sys.stderr, flush=True)


def fit(config, hooks, state):
    """Train `state` as `config` says, write the outputs, and return the metrics dict.

    With `config.resume` the run continues from the checkpoint in `config.out_dir`; a run that
    already reached its target only re-evaluates and rewrites the outputs.
    """
    prog = f"python -m {hooks.framework}_impl.train"
    if config.resume and not (checkpoint_root(config.out_dir) / LATEST).is_file():
        # Checked before creating anything, so a mistyped --out-dir leaves no empty dir behind.
        raise UsageError(f"--resume: no checkpoint in {config.out_dir} "
                         f"(expected {checkpoint_root(config.out_dir) / LATEST})")
    if not hooks.writer:  # another process of a data-parallel run writes; this one only reads
        resumed = load_checkpoint(config.out_dir) if config.resume else None
        return _fit_locked(config, hooks, state, Path(config.out_dir), resumed, prog)
    out_dir = prepare_out_dir(config.out_dir)
    with out_dir_lock(out_dir):
        _remove_stale_temp_files(out_dir)
        resumed = None
        if config.resume:
            try:
                resumed = load_checkpoint(out_dir)
            except UsageError as err:
                raise UsageError(f"--resume: {err}") from None
            _check_resume(config, hooks.framework, resumed.progress, resumed.path)
        else:
            _refuse_to_replace_unfinished(out_dir)
        return _fit_locked(config, hooks, state, out_dir, resumed, prog)


def _fit_locked(config, hooks, state, out_dir, resumed, prog):
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

    progress = {"framework": hooks.framework, "epoch": 0, "step_in_epoch": 0, "global_step": 0,
                "target_steps": total_steps, "train_seconds": 0.0, "step_losses": [],
                "epochs": [], "config": dataclasses.asdict(config)}
    saved_step = None  # the step of the newest checkpoint on disk that belongs to this run
    if resumed is not None:
        saved = resumed.progress
        if saved["global_step"] != saved["epoch"] * steps_per_epoch + saved["step_in_epoch"] \
                or saved["step_in_epoch"] >= steps_per_epoch:
            raise UsageError(f"--resume: checkpoint {resumed.path} is damaged (its step counts "
                             f"do not fit {steps_per_epoch} steps per epoch)")
        if saved["global_step"] > total_steps:
            raise UsageError(
                f"--resume: the checkpoint is at step {saved['global_step']}, past the "
                f"{total_steps} steps that --epochs {config.epochs}"
                f"{f' and --max-steps {config.max_steps}' if config.max_steps else ''} ask for; "
                f"raise them (or drop --max-steps) to train further")
        state = hooks.state_from_arrays(state, resumed.params, resumed.optimizer)
        for key in ("epoch", "step_in_epoch", "global_step", "train_seconds", "step_losses",
                    "epochs"):
            progress[key] = saved[key]
        saved_step = saved["global_step"]

    def position():
        return (f"step {progress['global_step']} (epoch {progress['epoch'] + 1}, batch "
                f"{progress['step_in_epoch']} of {steps_per_epoch})")

    def checkpoint(current_state):
        nonlocal saved_step
        if saved_step == progress["global_step"]:
            return  # nothing changed since the last one
        params, optimizer = hooks.state_to_arrays(current_state)
        bad = [k for k in CANONICAL_SHAPES if not np.isfinite(params[k]).all()]
        if bad:
            raise UsageError(f"the weights ({bad[0]}) became NaN or infinite by step "
                             f"{progress['global_step']}; stopped, {kept()}; try a smaller --lr")
        try:
            if hooks.writer:
                save_checkpoint(out_dir, params, optimizer, progress)
        except OSError as err:
            raise UsageError(f"cannot write a checkpoint into {checkpoint_root(out_dir)} "
                             f"({err.strerror or err})") from None
        saved_step = progress["global_step"]

    def kept():
        if saved_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint (step {saved_step}) is kept in {checkpoint_root(out_dir)}"

    def evaluate_test():
        batches = loaders.eval_batches(test_split, loader=config.loader, root=root)
        return hooks.evaluate(state, (hooks.to_batch(x, y) for x, y in batches))

    say = _say if hooks.writer else (lambda message: None)

    def stop(signum):
        checkpoint(state)
        say(f"{prog}: {signal.Signals(signum).name} after {position()}; checkpoint saved in "
             f"{checkpoint_root(out_dir)}. Resume with: {resume_command(hooks.framework, config)}")
        raise SystemExit(128 + signum)

    if resumed is None:
        say(f"{hooks.framework}: training {total_steps} steps ({steps_per_epoch} per epoch, "
             f"batch size {config.batch_size}) on {hooks.device}")
    elif progress["global_step"] < total_steps:
        say(f"{hooks.framework}: resuming from {resumed.path} after {position()}, "
             f"training to step {total_steps}")
    else:
        say(f"{hooks.framework}: the checkpoint in {resumed.path} is already at step "
             f"{total_steps}; nothing to train, re-evaluating and rewriting the outputs")

    bar = reporting.progress_bar(None, total=total_steps, desc=hooks.framework,
                                 enabled=config.progress and hooks.writer, leave=True)
    bar.update(progress["global_step"])
    with _StopRequests() as stop_requests:
        while progress["global_step"] < total_steps:
            epoch = progress["epoch"]
            batches = loaders.train_batches(
                train_split, seed=config.seed, epoch=epoch, batch_size=config.batch_size,
                loader=config.loader, root=root, start_step=progress["step_in_epoch"])
            start = time.perf_counter()
            stopping = False
            for images, labels in batches:
                new_state, loss = hooks.train_step(state, hooks.to_batch(images, labels))
                if not math.isfinite(loss):
                    bar.close()
                    raise UsageError(
                        f"training loss became {loss} at step {progress['global_step'] + 1} "
                        f"(epoch {epoch + 1}); stopped without writing outputs, {kept()}; "
                        f"try a smaller --lr")
                state = new_state
                progress["step_losses"].append(loss)
                progress["step_in_epoch"] += 1
                progress["global_step"] += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}", refresh=False)
                # One decision per step, taken together: a signal that lands after it waits for the
                # next step, so every process of a data-parallel run stops at the same step.
                stopping = hooks.agree_stop(stop_requests.signum is not None)
                if progress["global_step"] >= total_steps or stopping:
                    break
            progress["train_seconds"] += time.perf_counter() - start
            if progress["step_in_epoch"] == steps_per_epoch:
                losses = progress["step_losses"][-steps_per_epoch:]
                progress["epochs"].append(_epoch_record(
                    epoch + 1, progress["global_step"], float(np.mean(losses)), evaluate_test(),
                    progress["train_seconds"]))
                progress["epoch"] += 1
                progress["step_in_epoch"] = 0
                checkpoint(state)
            if stopping:
                bar.close()
                stop(stop_requests.signum or signal.SIGTERM)  # SIGTERM: another process's
            if progress["global_step"] >= total_steps:
                checkpoint(state)  # a --max-steps stop mid-epoch; a no-op after an epoch's end
        bar.close()

        records = list(progress["epochs"])
        if progress["step_in_epoch"]:  # stopped mid-epoch: evaluate the partial epoch too
            losses = progress["step_losses"][-progress["step_in_epoch"]:]
            records.append(_epoch_record(
                progress["epoch"] + 1, progress["global_step"], float(np.mean(losses)),
                evaluate_test(), progress["train_seconds"], partial=True))
        if stop_requests.signum:
            stop(stop_requests.signum)
    final = records[-1]

    params, _ = hooks.state_to_arrays(state)
    if not hooks.writer:
        return None
    full_epochs, rest = divmod(progress["global_step"], steps_per_epoch)
    images_seen = full_epochs * num_train + rest * config.batch_size
    metrics = {
        "framework": hooks.framework,
        "versions": {**hooks.versions, "python": platform.python_version(),
                     "numpy": np.__version__},
        "device": hooks.device,
        "config": dataclasses.asdict(config),
        "steps": progress["global_step"],
        "epochs": records,
        "test_loss": final["test_loss"],
        "test_accuracy": final["test_accuracy"],
        "test_correct": final["test_correct"],
        "test_examples": final["test_examples"],
        "train_seconds": progress["train_seconds"],
        "train_images_per_second": images_seen / max(progress["train_seconds"], 1e-9),
        "step_losses": progress["step_losses"],
    }
    try:  # each file is replaced atomically; metrics.json, the run's summary, goes last
        save_weights(out_dir / "model.safetensors", params)
        reporting.plot_losses(out_dir / "loss.png", metrics)
        reporting.write_metrics(out_dir / "metrics.json", metrics)
    except OSError as err:
        raise UsageError(f"cannot write the outputs into {out_dir} ({err.strerror or err})") \
            from None
    print(reporting.summary_line(metrics))
    return metrics

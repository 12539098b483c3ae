"""The training loop both frameworks share: batches, progress, checkpoints, evaluation, outputs.

`fit` drives a framework's engine (`torch_impl.backend` or `flax_impl.backend`, see
`mnist_common/backend.py`); everything a user sees on disk and on the terminal is produced
here, once, so the two CLIs cannot drift apart. The training order of epoch e is a pure
function of (seed, e), so `--resume` replays exactly the batches the uninterrupted run would
have seen: on one CPU both runs are bit-identical. A checkpoint (`mnist_common.checkpoints`) is
written at the end of every epoch, when `--max-steps` stops a run, and on Ctrl-C / SIGTERM,
which take effect between two dispatches of steps (`mnist_common.stopping`).
"""

import dataclasses
import math
import signal
import time
from pathlib import Path

import numpy as np

from mnist_common import data, loaders, reporting, rundir
from mnist_common.architecture import CANONICAL_SHAPES
from mnist_common.checkpoints import (
    LATEST,
    check_carry,
    check_resume,
    checkpoint_root,
    load_checkpoint,
    load_checkpoint_at,
    save_checkpoint,
)
from mnist_common.config import program, resume_command
from mnist_common.errors import UsageError
from mnist_common.fileio import say
from mnist_common.placement import agree_stop, is_writer, release
from mnist_common.stopping import StopRequests


def fit(config, backend, placement, state):
    """Train `state` as `config` says, write the outputs, and return the metrics dict.

    With `config.resume` the run continues from the checkpoint in `config.out_dir`; a run that
    already reached its target only re-evaluates and rewrites the outputs. Inputs are checked
    before the out-dir is created, so a bad flag or missing data leaves nothing behind.
    """
    if config.resume and not (checkpoint_root(config.out_dir) / LATEST).is_file():
        raise UsageError(f"--resume: no checkpoint in {config.out_dir} "
                         f"(expected {checkpoint_root(config.out_dir) / LATEST})")
    carried = _carried_checkpoint(config)
    splits = _load_data(config)
    run = TrainingRun(config, backend, placement, splits)
    if not run.writer:  # another process of a data-parallel run writes; this one only reads
        resumed = load_checkpoint(config.out_dir) if config.resume else carried
        return run.train(state, Path(config.out_dir), resumed)
    out_dir, created = rundir.prepare_out_dir(config.out_dir)
    with rundir.locked(out_dir, created):
        resumed = carried
        if config.resume:
            try:
                resumed = load_checkpoint(out_dir)
            except UsageError as err:
                raise UsageError(f"--resume: {err}") from None
            check_resume(config, backend.FRAMEWORK, resumed.progress, resumed.path)
            rundir.refuse_foreign_outputs(out_dir)
        else:
            rundir.refuse_to_replace(out_dir, config, backend.FRAMEWORK)
        return run.train(state, out_dir, resumed)


def _carried_checkpoint(config):
    """The checkpoint `--resume-from` names (either framework's), checked; None without it."""
    if config.resume_from is None:
        return None
    try:
        carried = load_checkpoint_at(config.resume_from)
    except UsageError as err:
        raise UsageError(f"--resume-from: {err}") from None
    check_carry(config, carried.progress, carried.path)
    return carried


def _load_data(config):
    """(root, train split, test split), with the batch size checked against the data."""
    root = data.prepare_data(config.data_dir, progress=config.progress)
    train_split = data.load_arrays(root, train=True)
    test_split = data.load_arrays(root, train=False)
    if config.batch_size > len(train_split[1]):
        raise UsageError(f"--batch-size {config.batch_size} is larger than the training set "
                         f"({len(train_split[1])} images)")
    return root, train_split, test_split


def _chunks(batches, size):
    """Consecutive lists of up to `size` items."""
    chunk = []
    for batch in batches:
        chunk.append(batch)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class TrainingRun:
    """One run's progress, and what it does at each step, epoch end, stop and finish."""

    def __init__(self, config, backend, placement, splits):
        self.config, self.backend, self.placement = config, backend, placement
        root, train_split, test_split = splits
        self.train_batches = loaders.EngineBatches(backend, placement, train_split, train=True,
                                                   loader=config.loader, root=root)
        self.test_batches = loaders.EngineBatches(backend, placement, test_split, train=False,
                                                  loader=config.loader, root=root)
        self.framework = backend.FRAMEWORK
        self.writer = is_writer(placement)
        self.num_train = len(train_split[1])
        self.steps_per_epoch = loaders.steps_per_epoch(self.num_train, config.batch_size)
        total = config.epochs * self.steps_per_epoch
        self.total_steps = total if config.max_steps is None else min(total, config.max_steps)
        self.progress = {
            "framework": self.framework, "epoch": 0, "step_in_epoch": 0, "global_step": 0,
            "target_steps": self.total_steps, "train_seconds": 0.0, "step_losses": [],
            "epochs": [], "config": dataclasses.asdict(config)}
        self.saved_step = None  # the step of the newest checkpoint on disk of this run
        self.state = None
        self.out_dir = None
        self.dispatch = (config.steps_per_dispatch or backend.steps_per_dispatch(placement)
                         or self.steps_per_epoch)
        self.first_call_seconds = None  # this process's first dispatch: compile + its steps

    # --- messages ---

    def say(self, message):
        if self.writer:
            say(message)

    def position(self):
        p = self.progress
        return (f"step {p['global_step']} (epoch {p['epoch'] + 1}, batch {p['step_in_epoch']} "
                f"of {self.steps_per_epoch})")

    def kept(self):
        if self.saved_step is None:
            return "no checkpoint was written"
        return (f"the last good checkpoint (step {self.saved_step}) is kept in "
                f"{checkpoint_root(self.out_dir)}")

    # --- checkpoints and evaluation ---

    def restore(self, resumed):
        """Continue from a checkpoint: its arrays into the state, its progress into ours."""
        saved = resumed.progress
        flag = "--resume" if self.config.resume else "--resume-from"
        if saved["global_step"] != saved["epoch"] * self.steps_per_epoch + saved["step_in_epoch"] \
                or saved["step_in_epoch"] >= self.steps_per_epoch:
            raise UsageError(f"{flag}: checkpoint {resumed.path} is damaged (its step counts "
                             f"do not fit {self.steps_per_epoch} steps per epoch)")
        if saved["global_step"] > self.total_steps:
            config = self.config
            raise UsageError(
                f"{flag}: the checkpoint is at step {saved['global_step']}, past the "
                f"{self.total_steps} steps that --epochs {config.epochs}"
                f"{f' and --max-steps {config.max_steps}' if config.max_steps else ''} ask "
                f"for; raise them (or drop --max-steps) to train further")
        self.state = self.backend.state_from_arrays(self.state, resumed.params, resumed.optimizer)
        for key in ("epoch", "step_in_epoch", "global_step", "train_seconds", "step_losses",
                    "epochs"):
            self.progress[key] = saved[key]
        # A checkpoint of another run is not one of this run: the first save writes one here.
        self.saved_step = saved["global_step"] if self.config.resume else None

    def checkpoint(self):
        """Save the current state, unless nothing changed since the last checkpoint."""
        if self.saved_step == self.progress["global_step"]:
            return
        params, optimizer = self.backend.state_to_arrays(self.state)
        bad = [k for k in CANONICAL_SHAPES if not np.isfinite(params[k]).all()]
        if bad:
            raise UsageError(f"the weights ({bad[0]}) became NaN or infinite by step "
                             f"{self.progress['global_step']}; stopped, {self.kept()}; try a "
                             f"smaller --lr")
        try:
            if self.writer:
                save_checkpoint(self.out_dir, params, optimizer, self.progress)
        except OSError as err:
            raise UsageError(f"cannot write a checkpoint into {checkpoint_root(self.out_dir)} "
                             f"({err.strerror or err}); {self.kept()}") from None
        self.saved_step = self.progress["global_step"]

    def evaluate_test(self):
        return self.backend.evaluate(self.state, self.test_batches.every_example())

    def epoch_record(self, steps, partial=False):
        """The record of the epoch that ended after `steps` steps of it."""
        p = self.progress
        evaluation = self.evaluate_test()
        return {"epoch": p["epoch"] + 1, "step": p["global_step"], "partial": partial,
                "train_loss": float(np.mean(p["step_losses"][-steps:])),
                "test_loss": evaluation["loss"], "test_accuracy": evaluation["accuracy"],
                "test_correct": evaluation["correct"], "test_examples": evaluation["examples"],
                "train_seconds": p["train_seconds"]}

    def stop(self, signum):
        self.checkpoint()
        self.say(f"{program(self.framework)}: {signal.Signals(signum).name} after "
                 f"{self.position()}; checkpoint saved in {checkpoint_root(self.out_dir)}. "
                 f"Resume with: {resume_command(self.framework, self.config)}")
        raise SystemExit(128 + signum)

    # --- training ---

    def announce(self, resumed):
        p, total = self.progress, self.total_steps
        if resumed is None:
            self.say(f"{self.framework}: training {total} steps ({self.steps_per_epoch} per "
                     f"epoch, batch size {self.config.batch_size}) on "
                     f"{self.backend.describe_placement(self.placement)}")
        elif p["global_step"] < total:
            self.say(f"{self.framework}: resuming from {resumed.path} after {self.position()}, "
                     f"training to step {total}")
        else:
            self.say(f"{self.framework}: the checkpoint in {resumed.path} is already at step "
                     f"{total}; nothing to train, re-evaluating and rewriting the outputs")

    def run_steps(self, chunk, bar):
        """One dispatch of steps; a non-finite loss stops the run at its exact step."""
        p = self.progress
        start = time.perf_counter()
        new_state, losses = self.backend.train_steps(self.state, chunk)
        losses = [float(loss) for loss in losses]  # waits for the dispatch to finish
        if self.first_call_seconds is None:
            self.first_call_seconds = time.perf_counter() - start
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):
                bar.close()
                raise UsageError(
                    f"training loss became {loss} at step {p['global_step'] + offset + 1} "
                    f"(epoch {p['epoch'] + 1}); stopped without writing outputs, {self.kept()}; "
                    f"try a smaller --lr")
        self.state = new_state
        p["step_losses"].extend(losses)
        p["step_in_epoch"] += len(losses)
        p["global_step"] += len(losses)
        bar.update(len(losses))
        bar.set_postfix(epoch=p["epoch"] + 1, loss=f"{losses[-1]:.4f}", refresh=False)

    def train_epoch(self, stop_requests, bar):
        """Train to the epoch's end (or the target, or a stop); True if asked to stop."""
        p, config = self.progress, self.config
        left = min(self.total_steps - p["global_step"], self.steps_per_epoch - p["step_in_epoch"])
        index_lists = loaders.train_index_batches(
            self.num_train, seed=config.seed, epoch=p["epoch"], batch_size=config.batch_size,
            start_step=p["step_in_epoch"])[:left]
        start = time.perf_counter()
        stopping = False
        # A dispatch never mixes the partial last batch with full ones (one shape per scan).
        full = [i for i in index_lists if len(i) == config.batch_size]
        groups = [full, [i for i in index_lists if len(i) != config.batch_size]]
        chunks = (chunk for g in groups for chunk in _chunks(self.train_batches(g), self.dispatch))
        for chunk in chunks:
            self.run_steps(chunk, bar)
            # One decision per dispatch, taken together: a signal that lands after it waits for
            # the next one, so every process of a data-parallel run stops at the same step.
            stopping = agree_stop(self.backend, self.placement, stop_requests.signum is not None)
            if stopping:
                break
        p["train_seconds"] += time.perf_counter() - start
        if p["step_in_epoch"] == self.steps_per_epoch:
            p["epochs"].append(self.epoch_record(self.steps_per_epoch))
            p["epoch"] += 1
            p["step_in_epoch"] = 0
            self.checkpoint()
        return stopping

    def train(self, state, out_dir, resumed):
        """Train to the target, write the outputs; the metrics (None in a non-writer)."""
        self.state, self.out_dir = state, out_dir
        if resumed is not None:
            self.restore(resumed)
        self.announce(resumed)
        p = self.progress
        bar = reporting.progress_bar(None, total=self.total_steps, desc=self.framework,
                                     enabled=self.config.progress and self.writer, leave=True)
        bar.update(p["global_step"])
        with StopRequests() as stop_requests:
            while p["global_step"] < self.total_steps:
                if self.train_epoch(stop_requests, bar):
                    bar.close()
                    self.stop(stop_requests.signum or signal.SIGTERM)  # SIGTERM: another's
            self.checkpoint()  # a --max-steps stop mid-epoch; a no-op after an epoch's end
            bar.close()
            records = list(p["epochs"])
            if p["step_in_epoch"]:  # stopped mid-epoch: evaluate the partial epoch too
                records.append(self.epoch_record(p["step_in_epoch"], partial=True))
            if stop_requests.signum:
                self.stop(stop_requests.signum)
        return self.finish(records)

    def finish(self, records):
        """Write model.safetensors, loss.png and metrics.json; print the summary line."""
        params, _ = self.backend.state_to_arrays(self.state)
        if not self.writer:
            return None
        p = self.progress
        full_epochs, rest = divmod(p["global_step"], self.steps_per_epoch)
        images_seen = full_epochs * self.num_train + rest * self.config.batch_size
        metrics = reporting.build_metrics(
            self.config, self.framework, self.backend.versions(),
            self.backend.describe_placement(self.placement), p, records, images_seen,
            self.first_call_seconds, self.backend.memory_format(self.placement))
        try:  # a file put in place of an output while the run trained is the user's
            rundir.refuse_foreign_outputs(self.out_dir)
        except UsageError as err:
            raise UsageError(f"{err} (the run is kept in {checkpoint_root(self.out_dir)}: "
                             f"{resume_command(self.framework, self.config)} writes the "
                             f"outputs)") from None
        try:
            reporting.write_outputs(self.out_dir, params, metrics)
        except OSError as err:
            raise UsageError(f"cannot write the outputs into {self.out_dir} "
                             f"({err.strerror or err})") from None
        print(reporting.summary_line(metrics))
        return metrics


def train_and_evaluate(config, backend):
    """Train and evaluate with `backend` as `config` says; write the outputs to `config.out_dir`.

    Args:
      config: a `mnist_common.config.Config`.
      backend: `torch_impl.backend` or `flax_impl.backend`.
    Returns:
      The metrics dict also written to `metrics.json` (None in a data-parallel non-writer).
    """
    placement = backend.select_placement(config.device, config.precision)
    try:
        state = backend.create_train_state(config, placement)
        return fit(config, backend, placement, state)
    finally:
        release(backend, placement)

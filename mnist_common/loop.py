"""The training loop both frameworks share: epochs, dispatches of steps, evaluation, progress.

`fit` drives a framework's engine (`torch_impl.backend` or `flax_impl.backend`, see
`mnist_common/backend.py`), so the two CLIs cannot drift apart. The order of epoch e is a pure
function of (seed, e), so a resumed run sees exactly the batches the uninterrupted run would
have seen: on one CPU both are bit-identical. Everything on disk (the run directory,
checkpoints at each epoch's end, stop requests, the outputs) sits behind `mnist_common.rundir`.
"""

import dataclasses
import math
import time

import numpy as np

from mnist_common import data, loaders, reporting, rundir
from mnist_common.errors import UsageError
from mnist_common.placement import agree_stop, is_writer, release


def train_and_evaluate(config, backend):
    """Train and evaluate with `backend` as `config` says; the outputs go to `config.out_dir`.

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


def fit(config, backend, placement, state, splits=None, until=None, open_run=rundir.open_run):
    """Train `state` as `config` says, write the outputs, and return the metrics dict.

    `splits`: (data root, train split, test split), by default loaded from `config.data_dir`;
    `until(progress)`: True ends the run at that epoch's end; `open_run`: the run directory.
    """
    with open_run(config, backend.FRAMEWORK, is_writer(placement)) as run:
        training = Training(config, backend, placement, splits or load_splits(config))
        progress = training.progress
        restored = run.restore(progress, training.steps_per_epoch)
        if restored is not None:
            state = backend.state_from_arrays(state, *restored)
        run.announce(progress, backend.describe_placement(placement))
        bar = reporting.progress_bar(None, total=progress["target_steps"], desc=backend.FRAMEWORK,
                                     enabled=config.progress and run.writer, leave=True)
        bar.update(progress["global_step"])
        with bar, run.catching_stops():
            while progress["global_step"] < progress["target_steps"]:
                state, stopping = training.train_epoch(state, run, bar)
                if stopping:
                    bar.close()
                    run.stop(backend.state_to_arrays(state), progress)
                if until is not None and until(progress):
                    break
            run.save_checkpoint(backend.state_to_arrays(state), progress)  # --max-steps
            bar.close()
            records = list(progress["epochs"])
            if progress["step_in_epoch"]:  # stopped mid-epoch: evaluate the partial epoch too
                records.append(training.epoch_record(state, progress["step_in_epoch"], True))
            if run.stop_requested():
                run.stop(backend.state_to_arrays(state), progress)
        metrics = training.metrics(records)
        run.publish(backend.state_to_arrays(state)[0], metrics)
        return metrics if run.writer else None


def load_splits(config):
    """(root, train split, test split), with the batch size checked against the data."""
    root = data.prepare_data(config.data_dir, progress=config.progress)
    train_split = data.load_arrays(root, train=True)
    test_split = data.load_arrays(root, train=False)
    if config.batch_size > len(train_split[1]):
        raise UsageError(f"--batch-size {config.batch_size} is larger than the training set "
                         f"({len(train_split[1])} images)")
    return root, train_split, test_split


class Training:
    """One run's engine, batches and progress, and the steps that advance them."""

    def __init__(self, config, backend, placement, splits):
        self.config, self.backend, self.placement = config, backend, placement
        root, train_split, test_split = splits
        self.train_batches = loaders.EngineBatches(backend, placement, train_split, train=True,
                                                   loader=config.loader, root=root)
        self.test_batches = loaders.EngineBatches(backend, placement, test_split, train=False,
                                                  loader=config.loader, root=root)
        self.num_train = len(train_split[1])
        self.steps_per_epoch = loaders.steps_per_epoch(self.num_train, config.batch_size)
        total = config.epochs * self.steps_per_epoch
        self.progress = {  # what a checkpoint keeps of the run
            "framework": backend.FRAMEWORK, "epoch": 0, "step_in_epoch": 0, "global_step": 0,
            "target_steps": total if config.max_steps is None else min(total, config.max_steps),
            "train_seconds": 0.0, "step_losses": [], "epochs": [],
            "config": dataclasses.asdict(config)}
        self.dispatch = (config.steps_per_dispatch or backend.steps_per_dispatch(placement)
                         or self.steps_per_epoch)
        self.first_call_seconds = None  # this process's first dispatch: compile + its steps

    def train_epoch(self, state, run, bar):
        """Train to the epoch's end, the target or a stop: (state, whether to stop)."""
        progress, config = self.progress, self.config
        left = min(progress["target_steps"] - progress["global_step"],
                   self.steps_per_epoch - progress["step_in_epoch"])
        index_batches = loaders.train_index_batches(
            self.num_train, seed=config.seed, epoch=progress["epoch"], batch_size=config.batch_size,
            start_step=progress["step_in_epoch"])[:left]
        start = time.perf_counter()
        stopping = False
        for batches in self.dispatches(index_batches):
            state = self.run_steps(state, batches, run, bar)
            # One decision per dispatch, taken together: a signal that lands after it waits for
            # the next one, so every process of a data-parallel run stops at the same step.
            stopping = agree_stop(self.backend, self.placement, run.stop_requested())
            if stopping:
                break
        progress["train_seconds"] += time.perf_counter() - start
        if progress["step_in_epoch"] == self.steps_per_epoch:
            progress["epochs"].append(self.epoch_record(state, self.steps_per_epoch))
            progress["epoch"] += 1
            progress["step_in_epoch"] = 0
            run.save_checkpoint(self.backend.state_to_arrays(state), progress)
        return state, stopping

    def dispatches(self, index_batches):
        """The batches in lists of up to `self.dispatch`, one engine call each; a dispatch never
        mixes the partial last batch with full ones (one shape per scan)."""
        size = self.config.batch_size
        for group in ([i for i in index_batches if len(i) == size],
                      [i for i in index_batches if len(i) != size]):
            batches = []
            for batch in self.train_batches(group):
                batches.append(batch)
                if len(batches) == self.dispatch:
                    yield batches
                    batches = []
            if batches:
                yield batches

    def run_steps(self, state, batches, run, bar):
        """One dispatch of steps; a non-finite loss stops the run at its exact step."""
        progress = self.progress
        start = time.perf_counter()
        new_state, losses = self.backend.train_steps(state, batches)
        losses = [float(loss) for loss in losses]  # waits for the dispatch to finish
        if self.first_call_seconds is None:
            self.first_call_seconds = time.perf_counter() - start
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):
                bar.close()
                raise UsageError(
                    f"training loss became {loss} at step {progress['global_step'] + offset + 1} "
                    f"(epoch {progress['epoch'] + 1}); stopped without writing outputs, "
                    f"{run.last_checkpoint_note()}; try a smaller --lr")
        progress["step_losses"].extend(losses)
        progress["step_in_epoch"] += len(losses)
        progress["global_step"] += len(losses)
        bar.update(len(losses))
        bar.set_postfix(epoch=progress["epoch"] + 1, loss=f"{losses[-1]:.4f}", refresh=False)
        return new_state

    def epoch_record(self, state, steps, partial=False):
        """The record of the epoch that ended after `steps` steps of it: the test evaluation."""
        progress = self.progress
        evaluation = self.backend.evaluate(state, self.test_batches.every_example())
        return {"epoch": progress["epoch"] + 1, "step": progress["global_step"], "partial": partial,
                "train_loss": float(np.mean(progress["step_losses"][-steps:])),
                "test_loss": evaluation["loss"], "test_accuracy": evaluation["accuracy"],
                "test_correct": evaluation["correct"], "test_examples": evaluation["examples"],
                "train_seconds": progress["train_seconds"]}

    def metrics(self, records):
        """metrics.json's content (`reporting.build_metrics`)."""
        full_epochs, rest = divmod(self.progress["global_step"], self.steps_per_epoch)
        images_seen = full_epochs * self.num_train + rest * self.config.batch_size
        return reporting.build_metrics(
            self.config, self.backend.FRAMEWORK, self.backend.versions(),
            self.backend.describe_placement(self.placement), self.progress, records,
            images_seen, self.first_call_seconds, self.backend.memory_format(self.placement))

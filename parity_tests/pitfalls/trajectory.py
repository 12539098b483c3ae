"""test_trajectory.py's checks run against a side: 100 steps of batch 64 on real MNIST from
identical weights; the first 10 within EARLY_ATOL of torch, step 100 within NOISE_FACTOR x the
largest of torch's four float32 self-variations (median and 90th percentile of |dw|)."""

import itertools

import numpy as np
import test_trajectory as trajectory
import torch
from parity_helpers import train_batches


class _SideArrays:
    """What test_trajectory's runner reads from a backend: the state's canonical weights."""

    def __init__(self, side):
        self.side = side

    def state_to_arrays(self, state):
        return self.side.canonical(state.params), {}


def _tensors(host_batches):
    return [(torch.from_numpy(x), torch.from_numpy(y))
            for x, y in itertools.islice(host_batches, trajectory.STEPS)]


def torch_reference(weights, train_split):
    """(torch's run, the bounds of each statistic) as test_trajectory's fixtures make them."""
    batches = _tensors(train_batches(train_split, seed=0, epoch=0,
                                             batch_size=trajectory.BATCH_SIZE))
    reference = trajectory.torch_run(weights, batches)
    stats = [trajectory.statistics(trajectory.torch_run(weights, batches, step), reference)
             for step in trajectory.TORCH_VARIATIONS.values()]
    bounds = {name: trajectory.NOISE_FACTOR * max(s[name] for s in stats)
              for name in trajectory.QUANTILES}
    return reference, bounds


def side_run(side, weights, train_split):
    """100 steps of the side on its own pipeline's batches of 64."""
    batches = _tensors(side.train_batches(train_split, seed=0, epoch=0,
                                          batch_size=trajectory.BATCH_SIZE))

    def step(state, batch):
        state, metrics = side.train_step(state, (batch[0].numpy(), batch[1].numpy()))
        return state, float(metrics["loss"])

    return trajectory._run(side.state(weights), batches, step, _SideArrays(side))


def failures(run, reference, bounds):
    """{check: why} for the two trajectory checks the run fails."""
    failed = {}
    early = trajectory.EARLY_STEPS
    losses = np.abs(run.losses[:early] - reference.losses[:early]).max()
    weights = trajectory.weight_gaps(run.early, reference.early).max()
    if losses > trajectory.EARLY_ATOL or weights > trajectory.EARLY_ATOL:
        failed["first_10_steps"] = f"losses {losses:.2g}, weights {weights:.2g}"
    over = trajectory.violations(run, reference, bounds)
    if over:
        failed["100_steps"] = ", ".join(f"{k} {v:.2g} > {b:.2g}" for k, (v, b) in over.items())
    return failed

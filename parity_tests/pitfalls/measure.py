"""What each mistake costs: the shipped torch side is the reference, from the same weights
(torch's seed-0 draws), the same batches (seed 0) and the same test images.

Per mistake: the error at load time if any; the logits' max |difference| at identical weights;
the loss and gradients of the first step; the weights after 10 and 100 steps; test accuracy
after one epoch (235 steps of 256) and the test images classified differently from torch; which
parity checks fail. The noise floor is torch against itself in its other memory layout
(test_accuracy.py's variation), trained and compared the same way.
"""

import time
from typing import NamedTuple

import numpy as np
from parity_helpers import TORCH_CPU, predictions, torch_loss_and_grads, torch_state, train_batches
from test_accuracy import MAX_GAP, MIN_ACCURACY, TORCH_VARIATIONS
from test_accuracy import NOISE_FACTOR as ACCURACY_NOISE_FACTOR
from test_trajectory import EARLY_STEPS, QUANTILES, weight_gaps

from mnist_common import loaders
from torch_impl import backend as torch_backend

from . import trajectory
from .catalogue import where
from .checks import CHECKS, one_line, run_check, side_loss_and_grads, torchs_epoch_batches

BATCH_SIZE = 256
KEPT_STEPS = (EARLY_STEPS, 100)
RUN_CHECKS = {  # the checks read from the runs, with the suite's bounds
    "first_10_steps": ("test_trajectory.py::test_first_10_steps_agree_to_1e_4",),
    "100_steps": ("test_trajectory.py::test_100_steps_stay_within_torchs_own_float32_noise",),
    "one_epoch_accuracy": ("test_accuracy.py::test_one_epoch_gives_the_same_accuracy",),
    "one_epoch_predictions": (
        "test_accuracy.py::test_one_epoch_gives_the_same_predictions_up_to_torchs_own_spread",),
}


class Run(NamedTuple):
    losses: np.ndarray  # one per step
    kept: dict  # step -> canonical weights
    predictions: np.ndarray  # the class of each test image after the epoch


def torch_run(weights, splits, variation=None):
    """One epoch of the shipped torch engine (or a float32 variation of its step)."""
    train, test = splits
    step = torch_backend.train_step if variation is None else variation(torch_backend.train_step)
    state, losses, kept = torch_state(weights), [], {}
    for n, (x, y) in enumerate(train_batches(train, seed=0, epoch=0,
                                                     batch_size=BATCH_SIZE), 1):
        state, metrics = step(state, torch_backend.place_batch(TORCH_CPU, x, y))
        losses.append(float(metrics["loss"]))
        if n in KEPT_STEPS:
            kept[n] = torch_backend.state_to_arrays(state)[0]
    final = torch_backend.state_to_arrays(state)[0]
    return Run(np.array(losses), kept, predictions("torch", final, test))


def flax_run(side, weights, splits):
    """One epoch of the side on its own pipeline's batches."""
    train, test = splits
    state, losses, kept = side.state(weights), [], {}
    for n, batch in enumerate(side.train_batches(train, seed=0, epoch=0,
                                                 batch_size=BATCH_SIZE), 1):
        state, metrics = side.train_step(state, batch)
        losses.append(metrics["loss"])
        if n in KEPT_STEPS:
            kept[n] = side.canonical(state.params)
    classes = [side.logits(state, x).argmax(1) for x, _ in side.eval_batches(test)]
    return Run(np.array([float(v) for v in losses]), kept, np.concatenate(classes))


class Reference(NamedTuple):
    torch: Run
    noise: Run  # torch in its other layout
    first_batch: tuple  # torch's first training batch
    test_images: np.ndarray  # the first 256 test images, for the logits
    trajectory: tuple  # torch's 100 steps of 64 and the bounds (trajectory.torch_reference)


def reference(weights, splits):
    """torch's epoch, the noise run, and the inputs every row is compared on."""
    return Reference(torch_run(weights, splits),
                     torch_run(weights, splits, TORCH_VARIATIONS["other_layout"]),
                     next(torchs_epoch_batches(splits[0])),
                     loaders.PIXELS[splits[1][0][:BATCH_SIZE]][:, None],
                     trajectory.torch_reference(weights, splits[0]))


def compare_runs(run, ref, labels):
    """The columns two runs give: weights after 10 and 100 steps, losses, accuracy, images."""
    row = {"accuracy": float((run.predictions == labels).mean()),
           "differ_from_torch": int((run.predictions != ref.torch.predictions).sum()),
           "first_10_losses_max_abs": float(np.abs(run.losses[:EARLY_STEPS]
                                                   - ref.torch.losses[:EARLY_STEPS]).max()),
           "steps": len(run.losses)}
    for step in KEPT_STEPS:
        gaps = weight_gaps(run.kept[step], ref.torch.kept[step])
        row[f"weights_{step}_max_abs"] = float(gaps.max())
        for name, q in QUANTILES.items():
            row[f"weights_{step}_{name}"] = float(np.quantile(gaps, q))
    return row


def torch_logits(weights, images, layout=None):
    """The shipped torch model's logits of NCHW host images (in `layout` if given)."""
    import torch

    model = torch_state(weights).model
    x = torch.from_numpy(images)
    if layout is not None:
        model.to(memory_format=layout)
        x = x.contiguous(memory_format=layout)
    with torch.no_grad():
        return model(x).numpy()


def noise_row(weights, ref, labels):
    """The noise floor's columns: torch in its other memory layout against torch."""
    import torch

    other = {"channels_last": torch.contiguous_format, "NCHW": torch.channels_last}
    layout = other[torch_backend.memory_format(TORCH_CPU)]
    gap = np.abs(torch_logits(weights, ref.test_images, layout)
                 - torch_logits(weights, ref.test_images)).max()
    return {"name": "torch_other_layout", "area": "noise",
            "what": "torch against itself in its other memory layout (the noise floor)",
            "logits_max_abs": float(gap), **compare_runs(ref.noise, ref, labels),
            "torch_accuracy": float((ref.torch.predictions == labels).mean())}


def failing_epoch_checks(row, noise):
    """The one-epoch parity checks the row fails, with test_accuracy.py's bounds."""
    failed = {}
    gap = abs(row["accuracy"] - row["torch_accuracy"])
    if row["accuracy"] < MIN_ACCURACY or gap > MAX_GAP:
        failed["one_epoch_accuracy"] = f"accuracy {row['accuracy']:.4f}, gap {gap:.4f}"
    if row["differ_from_torch"] > ACCURACY_NOISE_FACTOR * noise["differ_from_torch"]:
        failed["one_epoch_predictions"] = (f"{row['differ_from_torch']} images > "
                                           f"{ACCURACY_NOISE_FACTOR}x {noise['differ_from_torch']}")
    return failed


def measure(mistake, weights, splits, ref, noise, inputs):
    """One row of the table: what `mistake` costs, and the checks it fails."""
    start, side = time.perf_counter(), mistake.side
    row = {"name": mistake.name, "area": mistake.area, "what": mistake.what,
           "caught_by": mistake.caught_by, "done_right": where(mistake.done_right),
           "own_initial_weights": side.own_init, "torch_accuracy": noise["torch_accuracy"]}
    failed = {}
    for name in CHECKS:
        err = run_check(name, side, inputs)
        if err is not None:
            failed[name] = one_line(err)
    try:  # load: the state and one forward
        state = side.state(weights)
        row["logits_max_abs"] = float(np.abs(side.logits(state, ref.test_images)
                                             - torch_logits(weights, ref.test_images)).max())
    except Exception as err:  # noqa: BLE001 - the error is the row's finding
        row.update(load_error=one_line(err), failing_checks=failed,
                   seconds=time.perf_counter() - start)
        return row
    torch_loss, torch_grads = torch_loss_and_grads(weights, ref.first_batch)
    first = next(iter(side.train_batches(splits[0], seed=0, epoch=0, batch_size=BATCH_SIZE)))
    loss, grads = side_loss_and_grads(side, weights, first)
    row["loss_1_rel"] = abs(loss - torch_loss) / abs(torch_loss)
    row["grads_1_rel"] = float(max(np.abs(grads[k] - g).max() / np.abs(g).max()
                                   for k, g in torch_grads.items()))
    start_weights = side.initial_weights(0) if side.own_init else weights
    row.update(compare_runs(flax_run(side, start_weights, splits), ref, splits[1][1]))
    if not side.own_init:  # the run-based checks start both sides from the same weights
        failed.update(failing_epoch_checks(row, noise))
        failed.update(trajectory.failures(trajectory.side_run(side, weights, splits[0]),
                                          *ref.trajectory))
    row.update(failing_checks=failed, seconds=time.perf_counter() - start)
    return row


def failing_tests(row):
    """The parity tests whose assertion failed, by name."""
    names = {**{k: v[1] for k, v in CHECKS.items()}, **RUN_CHECKS}
    return sorted({test for check in row["failing_checks"] for test in names[check]})

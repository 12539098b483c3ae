"""The training loop against its specification, not against another run of itself.

A run of three epochs, stopped by --max-steps inside the second and resumed, trains through an
engine that delegates every call to the real one (`torch_impl.backend` or `flax_impl.backend`)
and records what it received and returned: each training batch, each step's loss, the weights
after each dispatch, each evaluation's batches and weights. The test then checks:
  - the batches are those it cuts itself from `np.random.default_rng([seed, epoch])`, the order
    `loaders.epoch_permutation` specifies, the partial last batch included, across the resume;
  - metrics.json's per-step losses are the engine's; each epoch's `train_loss` the mean of its
    own steps' losses, its step count the epoch's end;
  - each epoch's `test_loss`, correct count and accuracy are those of the test's own forward
    pass of the weights the engine held after that epoch's last step, over every test image,
    the loss a mean per example.
Small: 600 training images at batch 256 (steps of 256, 256, 88 images), 1,200 test images
(evaluation batches of 1,000 and 200, so a mean per batch differs from the mean per example).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import read_run
from training_helpers import use_small_mnist

from flax_impl import backend as flax_backend
from mnist_common import loaders
from mnist_common.config import Config
from mnist_common.loop import train_and_evaluate
from torch_impl import backend as torch_backend

TRAIN, TEST, BATCH, EPOCHS, SEED = 600, 1200, 256, 3, 3
STEPS_PER_EPOCH = 3
STOP = 4  # --max-steps 4: the first run stops after the second epoch's first batch
# Each engine with another way in: torch cuts batches on the device from the held split, one
# step per dispatch; Flax takes the DataLoader's host batches, two steps per dispatch.
ENGINES = {"torch": (torch_backend, "memory", None), "flax": (flax_backend, "dataloader", 2)}


def host(framework, batch):
    """A placed batch as the test cuts one: (NCHW float32 images, int64 labels) NumPy arrays."""
    if framework == "torch":
        return batch[0].cpu().numpy(), batch[1].cpu().numpy().astype(np.int64)
    return np.asarray(batch[0]).transpose(0, 3, 1, 2), np.asarray(batch[1]).astype(np.int64)


class RecordingEngine:
    """The engine `backend`, every call delegated; records what the loop hands it and gets."""

    def __init__(self, backend, start_step):
        self.backend, self.start_step = backend, start_step  # the run's steps before this one
        self.batches, self.losses = [], []  # per training step
        self.weights = {}  # {the run's step: canonical weights}, after each dispatch
        self.evaluations = []  # (canonical weights, host batches) per evaluate call

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def _trained(self, state, batches, losses):
        self.batches.extend(host(self.FRAMEWORK, b) for b in batches)
        self.losses.extend(float(loss) for loss in losses)
        self.weights[self.start_step + len(self.losses)] = self.backend.state_to_arrays(state)[0]

    def train_steps(self, state, batches):
        state, losses = self.backend.train_steps(state, batches)
        self._trained(state, batches, losses)
        return state, losses

    def train_step(self, state, batch):
        state, metrics = self.backend.train_step(state, batch)
        self._trained(state, [batch], [metrics["loss"]])
        return state, metrics

    def evaluate(self, state, batches):
        batches = list(batches)
        self.evaluations.append((self.backend.state_to_arrays(state)[0],
                                 [host(self.FRAMEWORK, b) for b in batches]))
        return self.backend.evaluate(state, batches)


def pixels(images_u8):
    """uint8 (N, 28, 28) -> ToTensor's float32 (N, 1, 28, 28): x / 255, IEEE-rounded."""
    return (images_u8.astype(np.float32) / np.float32(255))[:, None]


def reference_logits(weights, images):
    """The tutorial's CNN from canonical weights, written out here with torch's functional
    operations (not the engines' modules): float32 logits (N, 10)."""
    w = {key: torch.from_numpy(value) for key, value in weights.items()}
    x = torch.from_numpy(images)  # (N, 1, 28, 28)
    x = F.relu(F.conv2d(x, w["layer.0.weight"], w["layer.0.bias"]))  # (N, 16, 24, 24)
    x = F.relu(F.conv2d(x, w["layer.2.weight"], w["layer.2.bias"]))  # (N, 32, 20, 20)
    x = F.max_pool2d(x, 2)  # (N, 32, 10, 10)
    x = F.relu(F.conv2d(x, w["layer.5.weight"], w["layer.5.bias"]))  # (N, 64, 6, 6)
    x = F.max_pool2d(x, 2).flatten(1)  # (N, 576), C, H, W order
    x = F.relu(F.linear(x, w["fc_layer.0.weight"], w["fc_layer.0.bias"]))  # (N, 100)
    return F.linear(x, w["fc_layer.2.weight"], w["fc_layer.2.bias"]).numpy()  # (N, 10)


def expected_evaluation(weights, images, labels):
    """(mean cross-entropy per example, correct count, examples whose top two logits are too
    close for float32 to be sure of the argmax)."""
    logits = reference_logits(weights, images).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    losses = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(labels)), labels]
    top_two = np.sort(logits, axis=1)[:, -2:]
    return (losses.mean(), int((logits.argmax(axis=1) == labels).sum()),
            int((top_two[:, 1] - top_two[:, 0] < 1e-5).sum()))


def expected_batches(train_x, train_y):
    """The training batches of every epoch, cut here from the specified order."""
    batches = []
    for epoch in range(EPOCHS):
        order = np.random.default_rng([SEED, epoch]).permutation(TRAIN)
        assert np.array_equal(loaders.epoch_permutation(SEED, epoch, TRAIN), order)
        for start in range(0, TRAIN, BATCH):
            indices = order[start:start + BATCH]
            batches.append((pixels(train_x[indices]), train_y[indices].astype(np.int64)))
    return batches


def run(framework, out_dir, start_step, **flags):
    """One run through a recording engine; (the engine, metrics.json's content)."""
    backend, loader, dispatch = ENGINES[framework]
    engine = RecordingEngine(backend, start_step)
    config = Config(epochs=EPOCHS, batch_size=BATCH, seed=SEED, device="cpu", loader=loader,
                    steps_per_dispatch=dispatch, out_dir=str(out_dir), progress=False, **flags)
    train_and_evaluate(config, engine)
    return engine, read_run(out_dir)[0]


def check_records(records, losses, evaluations, test_split, steps):
    """Each record's step count, train_loss and test figures against the test's own."""
    test_x, test_y = test_split
    for record, (weights, batches), step in zip(records, evaluations, steps, strict=True):
        first = (record["epoch"] - 1) * STEPS_PER_EPOCH
        assert record["step"] == step and record["partial"] == (step % STEPS_PER_EPOCH != 0)
        assert record["train_loss"] == pytest.approx(np.mean(losses[first:step]), rel=1e-12)
        # Evaluation reads every test image once, in file order.
        assert np.array_equal(np.concatenate([b[0] for b in batches]), pixels(test_x))
        assert np.array_equal(np.concatenate([b[1] for b in batches]), test_y)
        loss, correct, unsure = expected_evaluation(weights, pixels(test_x), test_y)
        assert record["test_examples"] == TEST
        # Measured gaps 2e-8 to 4e-7 (float32 sums in other orders); a mean per batch instead
        # of per example moves it by a third of the two batches' difference.
        assert abs(record["test_loss"] - loss) <= 1e-5, (record["test_loss"], loss)
        assert abs(record["test_correct"] - correct) <= unsure
        assert record["test_accuracy"] == record["test_correct"] / TEST


@pytest.mark.slow
@pytest.mark.parametrize("framework", ENGINES)
def test_loop_follows_its_specification_across_epochs_and_a_resume(framework, real_splits,
                                                                   monkeypatch, tmp_path):
    splits = use_small_mnist(monkeypatch, real_splits, train=TRAIN, test=TEST)
    out_dir = tmp_path / "run"
    first, stopped = run(framework, out_dir, 0, max_steps=STOP)
    second, finished = run(framework, out_dir, STOP, resume=True)

    received = first.batches + second.batches
    expected = expected_batches(*splits[True])
    assert [len(y) for _, y in received] == [len(y) for _, y in expected] == [256, 256, 88] * 3
    for step, ((images, labels), (want_images, want_labels)) in enumerate(
            zip(received, expected, strict=True), start=1):
        assert images.dtype == np.float32 and np.array_equal(images, want_images), step
        assert np.array_equal(labels, want_labels), step

    losses = first.losses + second.losses
    assert stopped["steps"] == STOP and stopped["step_losses"] == losses[:STOP]
    assert finished["steps"] == EPOCHS * STEPS_PER_EPOCH and finished["step_losses"] == losses
    # The evaluated weights are those after the epoch's (or the stop's) last step.
    weights = {**first.weights, **second.weights}
    assert sorted(weights) == ([1, 2, 3, 4, 5, 6, 7, 8, 9] if framework == "torch" else
                               [2, 3, 4, 5, 6, 8, 9])  # Flax: two steps per dispatch
    evaluated_at = {"stopped": [3, 4], "finished": [6, 9]}
    for engine, name in ((first, "stopped"), (second, "finished")):
        for (state, _), step in zip(engine.evaluations, evaluated_at[name], strict=True):
            assert all(np.array_equal(state[k], weights[step][k]) for k in state), (name, step)
    check_records(stopped["epochs"], losses, first.evaluations, splits[False], steps=[3, 4])
    # The resumed run's first record is the first run's evaluation, carried in its checkpoint.
    assert finished["epochs"][0] == stopped["epochs"][0]
    check_records(finished["epochs"][1:], losses, second.evaluations, splits[False],
                  steps=[6, 9])
    for key in ("test_loss", "test_accuracy", "test_correct", "test_examples"):
        assert finished[key] == finished["epochs"][-1][key]

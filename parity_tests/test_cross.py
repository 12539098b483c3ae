"""Weights trained by one framework give the same predictions in the other, on real MNIST."""

import itertools

import numpy as np
import pytest
from margins import check
from parity_helpers import (
    flax_state,
    flax_step,
    predictions,
    torch_state,
    torch_step,
    train_batches,
)

from flax_impl import backend as flax_backend
from flax_impl import evaluate as flax_evaluate
from mnist_common import data
from mnist_common.weights import save_weights
from torch_impl import backend as torch_backend
from torch_impl import evaluate as torch_evaluate


@pytest.fixture(scope="module")
def splits(mnist_root):
    return data.load_arrays(mnist_root, train=True), data.load_arrays(mnist_root, train=False)


def test_torch_trained_weights_predict_identically_in_flax(canonical_weights, splits):
    train_split, test_split = splits
    state = torch_state(canonical_weights)
    for batch in train_batches(train_split, seed=1, epoch=0, batch_size=256):
        state, _ = torch_step(state, batch)
        if state.optimizer.state[state.model.layer[0].weight]["step"] >= 30:
            break
    weights, _ = torch_backend.state_to_arrays(state)
    torch_classes = predictions("torch", weights, test_split)
    assert (torch_classes == test_split[1]).mean() > 0.6  # trained, not at chance
    flax_classes = predictions("flax", weights, test_split)
    check("cross: torch-trained weights, test images Flax classifies differently",
          int((flax_classes != torch_classes).sum()), 0, group="cross")
    np.testing.assert_array_equal(flax_classes, torch_classes)


def test_flax_trained_weights_predict_identically_in_torch(canonical_weights, splits):
    train_split, test_split = splits
    state = flax_state(canonical_weights)
    batches = train_batches(train_split, seed=2, epoch=0, batch_size=128)
    for batch in itertools.islice(batches, 30):
        state, _ = flax_step(state, batch)
    weights, _ = flax_backend.state_to_arrays(state)
    flax_classes = predictions("flax", weights, test_split)
    assert (flax_classes == test_split[1]).mean() > 0.5  # trained, not at chance (0.1)
    torch_classes = predictions("torch", weights, test_split)
    check("cross: Flax-trained weights, test images torch classifies differently",
          int((flax_classes != torch_classes).sum()), 0, group="cross")
    np.testing.assert_array_equal(torch_classes, flax_classes)


def test_both_evaluate_clis_agree_to_the_image(tmp_path, canonical_weights, splits, mnist_root):
    train_split, _ = splits
    state = torch_state(canonical_weights)
    batches = train_batches(train_split, seed=3, epoch=0, batch_size=256)
    for batch in itertools.islice(batches, 20):
        state, _ = torch_step(state, batch)
    weights_file = tmp_path / "model.safetensors"
    save_weights(weights_file, torch_backend.state_to_arrays(state)[0])
    argv = ["--weights", str(weights_file), "--data-dir", str(mnist_root), "--device", "cpu",
            "--no-progress"]
    torch_metrics = torch_evaluate.main(argv)
    flax_metrics = flax_evaluate.main(argv)
    assert torch_metrics["test_examples"] == flax_metrics["test_examples"] == 10_000
    check("cross: evaluate CLIs on one file, |correct_torch - correct_Flax|",
          abs(torch_metrics["test_correct"] - flax_metrics["test_correct"]), 0, group="cross")
    check("cross: evaluate CLIs on one file, |loss_torch - loss_Flax|",
          abs(torch_metrics["test_loss"] - flax_metrics["test_loss"]), 1e-5, group="cross")
    assert torch_metrics["test_correct"] == flax_metrics["test_correct"]
    assert abs(torch_metrics["test_loss"] - flax_metrics["test_loss"]) < 1e-5

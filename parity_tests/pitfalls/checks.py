"""The targeted parity checks, as functions of a `Side`: each is the assertion of a parity test
(named in `CHECKS`), with that test's batch, bounds and assertion helpers imported from it, run
against the side instead of the shipped Flax engine. The shipped side passes every one
(test_pitfalls.py); each mistake of the catalogue fails at least its `caught_by` check.
"""

import functools
import itertools

import flax
import jax
import numpy as np
import torch
from parity_helpers import (
    TORCH_CPU,
    flax_apply,
    random_batch,
    seeded_gradients,
    to_numpy_batch,
    torch_apply,
    torch_loss_and_grads,
    torch_state,
)
from test_adam import LR, assert_is_the_tutorials_adam, assert_same_adam
from test_init import DRAWS, P_MIN, bound_of, draws, ks_p_value, ks_statistic
from test_model import LOGIT_ATOL
from test_training import GRAD_RTOL, assert_close_relative

from flax_impl import convert
from mnist_common.config import Config
from mnist_common.weights import CANONICAL_SHAPES
from torch_impl import backend as torch_backend

# What a mistake may raise when its weights or its module are first used: a parameter of
# another shape than the module declares (Flax checks every one at `apply`).
LOAD_ERRORS = (flax.errors.ScopeParamShapeError,)


class Inputs:
    """What the checks share: torch's seed-0 weights (conftest's `canonical_weights`) and,
    loaded at the first use, the real MNIST splits."""

    def __init__(self, weights=None, mnist_root=None):
        self._weights, self.mnist_root = weights, mnist_root

    @functools.cached_property
    def weights(self):
        if self._weights is not None:
            return self._weights
        state = torch_backend.create_train_state(Config(seed=0), TORCH_CPU)
        return torch_backend.state_to_arrays(state)[0]

    @functools.cached_property
    def train_split(self):
        from mnist_common import data

        return data.load_arrays(self.mnist_root or data.prepare_data(None), train=True)


def logits(side, inputs):
    """test_model.py: logits of identical weights on one batch, max abs <= LOGIT_ATOL."""
    images, _ = random_batch(1, batch_size=64)
    torch_logits = torch_state(inputs.weights).model(images).detach().numpy()
    flax_logits = side.logits(side.state(inputs.weights), images.numpy())
    assert flax_logits.shape == torch_logits.shape == (64, 10)
    np.testing.assert_allclose(flax_logits, torch_logits, rtol=0, atol=LOGIT_ATOL)


def side_loss_and_grads(side, weights, batch):
    """The side's loss and canonical gradients at `weights` on a host batch (NCHW)."""
    state = side.state(weights)
    x, y = to_numpy_batch(*batch)
    loss = side.objective()

    def objective(params):
        return loss(state.apply_fn({"params": params}, x), y)

    value, grads = jax.value_and_grad(objective)(state.params)
    return float(value), side.canonical(grads)


def loss_and_gradients(side, inputs):
    """test_training.py: loss and gradients of one batch, relative error <= GRAD_RTOL."""
    batch = random_batch(3, batch_size=64)
    torch_loss, torch_grads = torch_loss_and_grads(inputs.weights, batch)
    flax_loss, flax_grads = side_loss_and_grads(side, inputs.weights, batch)
    assert abs(flax_loss - torch_loss) <= GRAD_RTOL * abs(torch_loss), (flax_loss, torch_loss)
    assert_close_relative(flax_grads, torch_grads, GRAD_RTOL)


def adam_formula(side, inputs):
    """test_adam.py: the side's optimizer on weights of 100 against Adam's formula in float64,
    six steps of gradients from 1e-8 to 10; no gradient, no move."""
    assert_is_the_tutorials_adam(side.optimizer(LR))


def adam_six_steps(side, inputs):
    """test_adam.py: torch's and the side's optimizers fed the same six varied gradients,
    weights, moments and step count after each step."""
    tstate, fstate = torch_state(inputs.weights), side.state(inputs.weights)
    to_params = side.to_params or convert.canonical_to_params
    for step in range(1, 7):
        grads = seeded_gradients(step)
        tstate = torch_apply(tstate, grads)
        fstate = flax_apply(fstate, to_params(grads))
        assert_same_adam(torch_backend.state_to_arrays(tstate), side.arrays(fstate), step)


@functools.cache
def _torch_draws():
    return draws(torch_backend.create_train_state, torch_backend.state_to_arrays, TORCH_CPU)


def initial_draws(side, inputs):
    """test_init.py: the side's own draws over DRAWS seeds against torch's, each layer: the
    KS p-value >= P_MIN and every |w| within torch's bound 1 / sqrt(fan_in)."""
    theirs = _torch_draws()
    arrays = [side.initial_weights(seed) for seed in range(DRAWS)]
    failed = []
    for key in CANONICAL_SHAPES:
        ours = np.stack([a[key] for a in arrays])
        p = ks_p_value(ks_statistic(ours, theirs[key]), ours.size, theirs[key].size)
        if p < P_MIN or np.abs(ours).max() / bound_of(key) > 1:
            failed.append(f"{key} (p {p:.2g})")
        assert len({a.tobytes() for a in ours}) == DRAWS, key
    assert not failed, f"not torch's distribution: {', '.join(failed)}"


def torchs_epoch_batches(train_split, seed=0, epoch=0, batch_size=256):
    """torch's batches of one epoch, written out independently of mnist_common.loaders: the
    design's order (a NumPy permutation seeded [seed, epoch], every image, the last batch
    partial) and ToTensor's arithmetic, uint8 / 255 in float32."""
    images, labels = train_split
    order = np.random.default_rng([seed, epoch]).permutation(len(labels))
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        pixels = torch.from_numpy(images[index]).unsqueeze(1).to(torch.float32).div(255)
        yield pixels.numpy(), labels[index]


def batches(side, inputs):
    """test_loaders.py: the side's batches of epoch 0 are torch's, pixel for pixel and label
    for label, every image used, the last batch partial (96 images)."""
    split = inputs.train_split
    ours = side.train_batches(split, seed=0, epoch=0, batch_size=256)
    count = 0
    for count, pair in enumerate(itertools.zip_longest(ours, torchs_epoch_batches(split)), 1):
        assert None not in pair, f"batch {count}: one side has it, the other does not"
        (x, y), (tx, ty) = pair
        np.testing.assert_array_equal(y, ty, err_msg=f"labels of batch {count}")
        np.testing.assert_array_equal(x, tx, err_msg=f"pixels of batch {count}")
    assert count == 235


# name -> (check, the parity tests whose assertion it is)
CHECKS = {
    "logits": (logits, ("test_model.py::test_logits_match_on_identical_weights",)),
    "loss_and_gradients": (loss_and_gradients,
                           ("test_training.py::test_loss_and_gradients_match",)),
    "adam_formula": (adam_formula, ("test_adam.py::test_flax_optimizer_is_the_tutorials_adam",)),
    "adam_six_steps": (adam_six_steps,
                       ("test_adam.py::test_shipped_optimizers_agree_over_six_steps",)),
    "initial_draws": (initial_draws, (
        "test_init.py::test_flax_draws_have_torchs_distribution_in_every_layer",)),
    "batches": (batches, ("test_loaders.py::test_flax_sees_exactly_the_pixels_torch_sees",
                          "test_loaders.py::test_last_partial_batch_is_kept_and_identical",
                          "test_loaders.py::test_order_depends_on_seed_and_epoch")),
}


def run_check(name, side, inputs):
    """None if the check passes, else the exception it failed with (a mistake may also fail a
    check with an error of its own, a shape the conversion back cannot take, say)."""
    check, _ = CHECKS[name]
    try:
        check(side, inputs)
    except Exception as err:  # noqa: BLE001 - every way of failing is recorded
        return err
    return None


def one_line(err):
    """"ErrorType: its first line"."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()

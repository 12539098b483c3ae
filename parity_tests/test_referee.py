"""Each framework against the float64 referee, layer by layer, within float32's own bound.

The referee (`parity_tests/referee/`) computes the model's exact answer for the same weights and
a real MNIST batch, and `referee.bounds` says how far float32 arithmetic may take any correct
implementation from it, element by element (the derivation is in its docstring; nothing is
fitted). Each check records the largest |framework - referee| / bound over a tensor: 1 is the
edge. The batch comes from the shared pipeline (the frameworks' side) and from the referee's own
reading of the IDX files (the referee's side); `test_referee_data.py` holds the two together.
"""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from margins import record
from parity_helpers import (
    GRADIENT_SCALES,
    flax_apply,
    flax_loss_and_grads,
    flax_state,
    seeded_gradients,
    to_numpy_batch,
    torch_apply,
    torch_loss_and_grads,
    torch_state,
    train_batches,
)
from referee import adam, bounds, network
from referee import mnist as referee_mnist

from flax_impl import backend as flax_backend
from flax_impl import convert
from mnist_common import data
from mnist_common.weights import CANONICAL_SHAPES
from torch_impl import backend as torch_backend

BATCH_SIZE = 64
FRAMEWORKS = ("torch", "flax")
# The intermediates both frameworks expose: each convolution's and each linear layer's output.
LAYERS = {"z1": "conv 1->16", "z2": "conv 16->32", "z3": "conv 32->64", "z4": "fc 576->100",
          "z5": "logits"}
TORCH_MODULES = {"z1": "layer.0", "z2": "layer.2", "z3": "layer.5", "z4": "fc_layer.0",
                 "z5": "fc_layer.2"}


def ratio_to_bound(actual, expected, bound):
    """(largest |actual - expected| / bound, the error and the bound there); a zero bound
    demands an exact match."""
    error = np.abs(np.asarray(actual, np.float64) - expected)
    bound = np.asarray(bound, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bound > 0, error / bound, np.where(error > 0, np.inf, 0.0))
    worst = np.unravel_index(np.argmax(ratio), ratio.shape) if ratio.ndim else ()
    return float(ratio[worst]), float(error[worst]), float(bound[worst])


def held(framework, what, pairs, recorded=True):
    """Assert, over (actual, expected, bound) `pairs`, |actual - expected| <= bound; record the
    largest ratio unless told not to."""
    ratio, error, bound = max(ratio_to_bound(*pair) for pair in pairs)
    if recorded:
        record(f"referee: {framework} {what} (|error| / float32 bound)", ratio, 1.0,
               group="referee", framework=framework, layer=what, error_at_worst=error,
               bound_at_worst=bound)
    assert ratio <= 1, f"{framework} {what}: error {error:.3g} > its float32 bound {bound:.3g}"


@pytest.fixture(scope="module")
def batch(mnist_root):
    """Batch 0 of seed 0, epoch 0: the referee's (float64, from its own reading) and the
    pipeline's (what the frameworks train on)."""
    images, labels = referee_mnist.load_split(mnist_root, train=True)
    indices = referee_mnist.batch_indices(len(labels), 0, 0, BATCH_SIZE)[0]
    split = data.load_arrays(mnist_root, train=True)
    shared = next(train_batches(split, seed=0, epoch=0, batch_size=BATCH_SIZE))
    return referee_mnist.pixels(images[indices]), labels[indices].astype(np.int64), shared


@pytest.fixture(scope="module")
def exact(batch, canonical_weights):
    """The referee's intermediates, loss and gradients, with their float32 bounds."""
    x, labels, _ = batch
    acts = network.forward(canonical_weights, x)
    err = bounds.forward_bounds(canonical_weights, acts)
    grads, d = network.backward(canonical_weights, acts, labels)
    return {"acts": acts, "err": err, "loss": network.loss(acts["z5"], labels),
            "loss_err": bounds.loss_bound(acts, err, labels), "grads": grads,
            "grad_err": bounds.gradient_bounds(canonical_weights, acts, d, err, labels)}


def torch_intermediates(weights, images):
    model, out = torch_state(weights).model, {}
    modules = dict(model.named_modules())
    for name, key in TORCH_MODULES.items():
        modules[key].register_forward_hook(
            lambda mod, args, result, name=name: out.__setitem__(name, result.detach().numpy()))
    with torch.no_grad():
        model(torch.as_tensor(images))
    return out


def flax_intermediates(weights, images, labels):
    state = flax_state(weights)
    x, _ = to_numpy_batch(images, labels)
    _, captured = state.apply_fn({"params": state.params}, x, capture_intermediates=True,
                                 mutable=["intermediates"])
    out = {}
    for name, key in TORCH_MODULES.items():
        value = np.asarray(captured["intermediates"][convert.module_name(key)]["__call__"][0])
        out[name] = value.transpose(0, 3, 1, 2) if value.ndim == 4 else value  # NHWC -> NCHW
    return out


def test_the_referee_imports_neither_framework():
    code = ("import sys; import referee.adam, referee.bounds, referee.mnist, referee.network; "
            "print(sorted({'torch', 'jax', 'flax', 'optax'} & set(sys.modules)))")
    here = Path(__file__).parent
    result = subprocess.run([sys.executable, "-c", code], cwd=here, capture_output=True,
                            text=True, check=True, env={"PYTHONPATH": str(here)})
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_layer_is_within_float32_of_the_referee(framework, batch, exact,
                                                      canonical_weights):
    _, _, (images, labels) = batch
    if framework == "torch":
        out = torch_intermediates(canonical_weights, images)
    else:
        out = flax_intermediates(canonical_weights, images, labels)
    for name, what in LAYERS.items():
        held(framework, what, [(out[name], exact["acts"][name], exact["err"][name])])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_loss_and_every_gradient_are_within_float32_of_the_referee(framework, batch, exact,
                                                                   canonical_weights):
    loss_and_grads = torch_loss_and_grads if framework == "torch" else flax_loss_and_grads
    loss, grads = loss_and_grads(canonical_weights, batch[2])
    held(framework, "loss", [(loss, exact["loss"], exact["loss_err"])])
    for key in CANONICAL_SHAPES:
        held(framework, f"d {key}", [(grads[key], exact["grads"][key], exact["grad_err"][key])])


def apply_gradients(framework, weights, gradient_steps):
    """The framework's own optimizer (the engine's) fed each step's canonical float32 gradients;
    its canonical (weights, Adam state) after every step."""
    state = (torch_state if framework == "torch" else flax_state)(weights)
    backend = torch_backend if framework == "torch" else flax_backend
    for grads in gradient_steps:
        if framework == "torch":
            state = torch_apply(state, grads)
        else:
            state = flax_apply(state, convert.canonical_to_params(grads))
        yield jax.device_get(backend.state_to_arrays(state))


def assert_adam_held(framework, referee_state, arrays, label, quiet=False):
    """Weights and both moments of every layer within their bounds; the step count exact."""
    params, optimizer = arrays
    assert optimizer["step"][0] == referee_state.step, f"{framework}: step count"
    state = referee_state  # short, for the line below
    held(framework, f"{label}: weights", [
        (params[k], state.params[k], state.err_params[k]) for k in CANONICAL_SHAPES], not quiet)
    for moment, ours, err in (("exp_avg", referee_state.m, referee_state.err_m),
                              ("exp_avg_sq", referee_state.v, referee_state.err_v)):
        held(framework, f"{label}: {moment}", [
            (optimizer[f"{moment}.{k}"], ours[k], err[k]) for k in CANONICAL_SHAPES], not quiet)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_one_adam_step_on_the_exact_gradient_is_within_float32(framework, exact,
                                                                canonical_weights):
    grads = {k: g.astype(np.float32) for k, g in exact["grads"].items()}
    referee_state = adam.step(adam.init(canonical_weights), grads)
    arrays, = apply_gradients(framework, canonical_weights, [grads])
    assert_adam_held(framework, referee_state, arrays, "Adam, 1 step")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_six_adam_steps_are_within_float32(framework, canonical_weights):
    # Seeded gradients from 1e-8 (where eps decides) to 10, sign changes, exact zeros.
    steps = [seeded_gradients(step) for step in range(1, len(GRADIENT_SCALES) + 1)]
    referee_state = adam.init(canonical_weights)
    arrays = apply_gradients(framework, canonical_weights, steps)
    for t, (grads, after) in enumerate(zip(steps, arrays, strict=True), start=1):
        referee_state = adam.step(referee_state, grads)
        assert_adam_held(framework, referee_state, after, f"Adam, {t} steps", quiet=t < 6)

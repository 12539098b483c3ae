"""Each framework against the float64 referee, layer by layer, within float32's own bound.

The referee (`parity_tests/referee/`) computes the model's exact answer for the same weights and
a real MNIST batch, and `referee.bounds` says how far float32 arithmetic may take any correct
implementation from it, element by element (the derivation is in its docstring; nothing is
fitted). Each check records the largest |framework - referee| / bound over a tensor: 1 is the
edge. The batch comes from the shared pipeline (the frameworks' side) and from the referee's own
reading of the IDX files (the referee's side); `test_referee_data.py` holds the two together.
These bounds carry every earlier layer's rounding, so on the first layers they are far wider than
the values; `test_referee_layers.py` holds each layer alone to its own rounding, tight enough to
reject a 1 % error.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from layer_capture import TORCH_MODULES
from parity_helpers import (
    GRADIENT_SCALES,
    flax_loss_and_grads,
    flax_state,
    seeded_gradients,
    to_numpy_batch,
    torch_loss_and_grads,
    torch_state,
)
from referee import adam, bounds, network
from referee_checks import apply_gradients, assert_adam_held, held

from flax_impl import convert
from mnist_common.weights import CANONICAL_SHAPES

FRAMEWORKS = ("torch", "flax")
# The intermediates both frameworks expose: each convolution's and each linear layer's output.
LAYERS = {"z1": "conv 1->16", "z2": "conv 16->32", "z3": "conv 32->64", "z4": "fc 576->100",
          "z5": "logits"}


@pytest.fixture(scope="module")
def exact(referee_batch, canonical_weights):
    """The referee's intermediates, loss and gradients, with their float32 bounds."""
    x, labels, _ = referee_batch
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
def test_every_layer_is_within_float32_of_the_referee(framework, referee_batch, exact,
                                                      canonical_weights):
    _, _, (images, labels) = referee_batch
    if framework == "torch":
        out = torch_intermediates(canonical_weights, images)
    else:
        out = flax_intermediates(canonical_weights, images, labels)
    for name, what in LAYERS.items():
        held(framework, what, [(out[name], exact["acts"][name], exact["err"][name])])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_loss_and_every_gradient_are_within_float32_of_the_referee(framework, referee_batch, exact,
                                                                   canonical_weights):
    loss_and_grads = torch_loss_and_grads if framework == "torch" else flax_loss_and_grads
    loss, grads = loss_and_grads(canonical_weights, referee_batch[2])
    held(framework, "loss", [(loss, exact["loss"], exact["loss_err"])])
    for key in CANONICAL_SHAPES:
        held(framework, f"d {key}", [(grads[key], exact["grads"][key], exact["grad_err"][key])])


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

"""Same optimiser: the Adam each engine's `create_train_state` makes, step by step.

Both sides get identical gradients (seeded arrays, not each side's own backward pass), so any
difference is the optimiser's: its formula, its hyper-parameters, its state.
"""

import numpy as np
import pytest
import torch
from margins import check
from parity_helpers import (
    FLAX_CPU,
    GRADIENT_SCALES,
    flax_apply,
    flax_state,
    seeded_gradients,
    torch_apply,
    torch_state,
)

from flax_impl import backend as flax_backend
from flax_impl import convert
from mnist_common.config import Config
from mnist_common.weights import CANONICAL_SHAPES
from torch_impl import backend as torch_backend

# The tutorial's Adam: torch.optim.Adam(lr=2e-4) with torch's defaults.
LR, BETA1, BETA2, EPS = 2e-4, 0.9, 0.999, 1e-8
# One Adam step moves each weight by at most lr = 2e-4; the update m/(sqrt(v)+eps) is O(1) and
# differs between the two only by rounding, so 1e-6 absolute is ~0.5 % of the step: tight.
ADAM_STEP_ATOL = 1e-6
# The moments are the same float32 recurrences in other forms (torch lerps, optax multiplies and
# adds): a few ulps apart, relative to the element or, where earlier steps cancelled, to the
# tensor's largest entry. A wrong beta moves them by >= 10 %.
MOMENT_RTOL = 1e-5
MOMENT_ATOL_OF_MAX = 1e-6
def assert_same_adam(torch_arrays, flax_arrays, step):
    (torch_params, torch_opt), (flax_params, flax_opt) = torch_arrays, flax_arrays
    for key in CANONICAL_SHAPES:
        where = f"{key} after step {step}"
        np.testing.assert_allclose(flax_params[key], torch_params[key], rtol=0,
                                   atol=ADAM_STEP_ATOL, err_msg=where)
        for moment in ("exp_avg", "exp_avg_sq"):
            expected = torch_opt[f"{moment}.{key}"]
            np.testing.assert_allclose(flax_opt[f"{moment}.{key}"], expected, rtol=MOMENT_RTOL,
                                       atol=MOMENT_ATOL_OF_MAX * np.abs(expected).max(),
                                       err_msg=f"{moment} of {where}")
    assert torch_opt["step"][0] == flax_opt["step"][0] == step


def test_shipped_optimizers_agree_over_six_steps(canonical_weights):
    tstate, fstate = torch_state(canonical_weights), flax_state(canonical_weights)
    for step in range(1, len(GRADIENT_SCALES) + 1):
        grads = seeded_gradients(step)
        tstate = torch_apply(tstate, grads)
        fstate = flax_apply(fstate, convert.canonical_to_params(grads))
        assert int(fstate.step) == step
        if step == len(GRADIENT_SCALES):
            params = (torch_backend.state_to_arrays(tstate)[0],
                      flax_backend.state_to_arrays(fstate)[0])
            check("Adam: the engines' optimizers after 6 steps, max |w_Flax - w_torch|",
                  max(np.abs(params[1][k] - params[0][k]).max() for k in CANONICAL_SHAPES),
                  ADAM_STEP_ATOL, group="adam")
        assert_same_adam(torch_backend.state_to_arrays(tstate),
                         flax_backend.state_to_arrays(fstate), step)
    moved = max(np.abs(torch_backend.state_to_arrays(tstate)[0][k] - canonical_weights[k]).max()
                for k in CANONICAL_SHAPES)
    assert moved > 5 * LR  # the steps happened


def reference_adam_updates(grads, params, steps):
    """The tutorial's Adam written out in float64: the update of each step."""
    m = np.zeros_like(params, dtype=np.float64)
    v = np.zeros_like(params, dtype=np.float64)
    updates = []
    for t, grad in enumerate(grads[:steps], start=1):
        m = BETA1 * m + (1 - BETA1) * grad
        v = BETA2 * v + (1 - BETA2) * grad.astype(np.float64) ** 2
        m_hat, v_hat = m / (1 - BETA1 ** t), v / (1 - BETA2 ** t)
        updates.append(-LR * m_hat / (np.sqrt(v_hat) + EPS))  # eps outside the sqrt
    return updates


def gradient_sequence(shape=(64,)):
    """Per-step gradients of changing sign and magnitude; the first ones near Adam's eps, where
    eps decides the update."""
    rng = np.random.default_rng(3)
    scales = (1e-8, 3e-8, 1.0, 1e-3, 10.0, 0.1)
    return [(rng.standard_normal(shape) * scale).astype(np.float32) for scale in scales]


def test_flax_optimizer_is_the_tutorials_adam():
    # The engine's own transformation (state.tx), against the formula. The weights are 100 so
    # that weight decay, if any crept in (adamw), would add >= 1 % to each update.
    assert_is_the_tutorials_adam(flax_backend.create_train_state(Config(), FLAX_CPU).tx)


def assert_is_the_tutorials_adam(tx):
    """Optax transformation `tx` on weights of 100 against Adam's formula in float64, six steps
    of gradients from 1e-8 to 10; no gradient, no move."""
    params = np.full((64,), 100.0, np.float32)
    grads = gradient_sequence()
    expected = reference_adam_updates(grads, params, len(grads))
    opt_state = tx.init(params)
    for t, grad in enumerate(grads):
        updates, opt_state = tx.update(grad, opt_state, params)
        np.testing.assert_allclose(np.asarray(updates), expected[t], rtol=1e-5, atol=0,
                                   err_msg=f"step {t + 1}")
    # No gradient, no move: weight decay would still shrink the weights.
    updates, _ = tx.update(np.zeros_like(params), tx.init(params), params)
    assert not np.asarray(updates).any()


def test_torch_optimizer_is_the_tutorials_adam(canonical_weights):
    optimizer = torch_state(canonical_weights).optimizer
    assert type(optimizer) is torch.optim.Adam  # not AdamW, which subclasses it
    group = optimizer.param_groups[0]
    assert group["lr"] == LR and group["betas"] == (BETA1, BETA2) and group["eps"] == EPS
    assert group["weight_decay"] == 0 and not group["amsgrad"] and not group["maximize"]
    assert not group.get("decoupled_weight_decay", False)
    assert len(optimizer.param_groups) == 1
    assert sum(p.numel() for p in group["params"]) == 123_222


def test_torch_optimizer_follows_the_formula(canonical_weights):
    # The shipped optimizer's class and settings on one weight vector, against the formula.
    optimizer = torch_state(canonical_weights).optimizer
    settings = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    weight = torch.nn.Parameter(torch.ones(64))
    adam = type(optimizer)([weight], **settings)
    grads = gradient_sequence()
    expected = reference_adam_updates(grads, weight.detach().numpy(), len(grads))
    for t, grad in enumerate(grads):
        before = weight.detach().numpy().copy()
        weight.grad = torch.from_numpy(grad)
        adam.step()
        # float32 weights of 1: each update is resolved to ~1.2e-7 of 2e-4 (0.06 %).
        np.testing.assert_allclose(weight.detach().numpy() - before, expected[t], rtol=0,
                                   atol=3e-7, err_msg=f"step {t + 1}")


def test_adam_check_can_fail(canonical_weights):
    # Guard for assert_same_adam: Flax fed a 1 % larger gradient at step 2 must be caught.
    tstate, fstate = torch_state(canonical_weights), flax_state(canonical_weights)
    for step, factor in ((1, 1.0), (2, 1.01)):
        grads = seeded_gradients(step)
        tstate = torch_apply(tstate, grads)
        fstate = flax_apply(fstate, convert.canonical_to_params(
            {k: g * np.float32(factor) for k, g in grads.items()}))
    with pytest.raises(AssertionError):
        assert_same_adam(torch_backend.state_to_arrays(tstate),
                         flax_backend.state_to_arrays(fstate), 2)

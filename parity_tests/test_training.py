"""Same training: loss, gradients, one Adam step, and 100 steps on identical batches."""

import jax
import numpy as np
import optax
import pytest
import torch
from parity_helpers import flax_state, random_batch, torch_state

from flax_impl import convert
from flax_impl import train as flax_train
from mnist_common.loaders import to_numpy_batch
from mnist_common.weights import CANONICAL_SHAPES
from torch_impl import train as torch_train

# Loss and gradients: the same float32 sums in other orders; relative to each tensor's largest
# entry, a few ulps (1.2e-7 each) summed over at most ~600 terms stays well below 1e-5.
GRAD_RTOL = 1e-5
# One Adam step moves each weight by at most lr = 2e-4; the update m/(sqrt(v)+eps) is O(1) and
# differs between the two only by rounding, so 1e-6 absolute is ~0.5 % of the step: tight.
ADAM_STEP_ATOL = 1e-6
# Over 100 steps rounding differences compound through the data (the weights feed the next
# gradient); 1e-4 absolute is half of one step's size, so a wrong formula would be caught.
TRAJECTORY_ATOL = 1e-4


def torch_loss_and_grads(weights, batch):
    state = torch_state(weights)
    images, labels = batch
    loss = torch.nn.functional.cross_entropy(state.model(images), labels)
    loss.backward()
    named = dict(state.model.named_parameters())
    return loss.item(), {k: named[k].grad.numpy().copy() for k in CANONICAL_SHAPES}


def flax_loss_and_grads(weights, batch):
    state = flax_state(weights)
    x, y = to_numpy_batch(*batch)

    def loss_fn(params):
        return flax_train.cross_entropy(state.apply_fn({"params": params}, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return float(loss), convert.params_to_canonical(jax.device_get(grads))


def assert_close_relative(actual, expected, rtol):
    for key in CANONICAL_SHAPES:
        scale = np.abs(expected[key]).max()
        error = np.abs(actual[key] - expected[key]).max()
        assert error <= rtol * scale, f"{key}: max error {error:.3g} > {rtol} x {scale:.3g}"


def test_loss_and_gradients_match(canonical_weights):
    batch = random_batch(3, batch_size=64)
    torch_loss, torch_grads = torch_loss_and_grads(canonical_weights, batch)
    flax_loss, flax_grads = flax_loss_and_grads(canonical_weights, batch)
    assert abs(flax_loss - torch_loss) <= GRAD_RTOL * abs(torch_loss)
    assert_close_relative(flax_grads, torch_grads, GRAD_RTOL)


def test_gradient_check_can_fail(canonical_weights):
    # Guard for the check above: the HWC/CHW permutation left out must be detected.
    batch = random_batch(3, batch_size=64)
    _, torch_grads = torch_loss_and_grads(canonical_weights, batch)
    _, flax_grads = flax_loss_and_grads(canonical_weights, batch)
    flax_grads["fc_layer.0.weight"] = flax_grads["fc_layer.0.weight"][:, convert.HWC_FROM_CHW]
    with pytest.raises(AssertionError):
        assert_close_relative(flax_grads, torch_grads, GRAD_RTOL)


def test_adam_hyperparameters_are_torchs():
    torch_adam = torch.optim.Adam([torch.zeros(1)], lr=2e-4)
    defaults = torch_adam.defaults
    assert defaults["betas"] == (0.9, 0.999) and defaults["eps"] == 1e-8
    assert not defaults["amsgrad"] and defaults["weight_decay"] == 0


def run_steps(weights, batches):
    """Train both from `weights` on `batches`; return (torch, flax) losses and final weights."""
    tstate, fstate = torch_state(weights), flax_state(weights)
    torch_losses, flax_losses = [], []
    for batch in batches:
        tstate, loss = torch_train.train_step(tstate, batch)
        torch_losses.append(loss)
        fstate, metrics = flax_train.train_step(fstate, to_numpy_batch(*batch))
        flax_losses.append(float(metrics["loss"]))
    torch_params, torch_opt = torch_train.state_to_arrays(tstate)
    flax_params, flax_opt = flax_train.state_to_arrays(fstate)
    return (np.array(torch_losses), torch_params, torch_opt), (np.array(flax_losses), flax_params,
                                                              flax_opt)


def test_one_adam_step_matches(canonical_weights):
    (_, torch_params, torch_opt), (_, flax_params, flax_opt) = run_steps(
        canonical_weights, [random_batch(4, batch_size=64)])
    for key in CANONICAL_SHAPES:
        moved = np.abs(torch_params[key] - canonical_weights[key]).max()
        assert moved > 1e-4, f"{key} did not move"  # the step happened
        np.testing.assert_allclose(flax_params[key], torch_params[key], rtol=0,
                                   atol=ADAM_STEP_ATOL, err_msg=key)
    assert torch_opt["step"][0] == flax_opt["step"][0] == 1
    for key in CANONICAL_SHAPES:
        scale = np.abs(torch_opt[f"exp_avg.{key}"]).max()
        np.testing.assert_allclose(flax_opt[f"exp_avg.{key}"], torch_opt[f"exp_avg.{key}"],
                                   rtol=0, atol=GRAD_RTOL * scale, err_msg=key)


def test_optax_adam_formula_equals_torchs_on_one_tensor():
    # Isolates the optimiser: same gradient sequence, no model; any bias-correction or eps
    # placement difference shows at ulp scale here.
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((7, 5)).astype(np.float32)
    grads = [rng.standard_normal((7, 5)).astype(np.float32) * 10.0 ** -k for k in range(6)]
    torch_weight = torch.nn.Parameter(torch.from_numpy(weight.copy()))
    torch_adam = torch.optim.Adam([torch_weight], lr=2e-4)
    tx = optax.adam(2e-4, b1=0.9, b2=0.999, eps=1e-8)
    flax_weight, opt_state = weight.copy(), tx.init(weight)
    for grad in grads:
        torch_weight.grad = torch.from_numpy(grad)
        torch_adam.step()
        updates, opt_state = tx.update(grad, opt_state, flax_weight)
        flax_weight = optax.apply_updates(flax_weight, updates)
    np.testing.assert_allclose(np.asarray(flax_weight), torch_weight.detach().numpy(), rtol=0,
                               atol=ADAM_STEP_ATOL)


@pytest.mark.slow
def test_100_steps_follow_the_same_trajectory(canonical_weights):
    batches = [random_batch(100 + i, batch_size=32) for i in range(100)]
    (torch_losses, torch_params, _), (flax_losses, flax_params, _) = run_steps(
        canonical_weights, batches)
    assert torch_losses[-10:].mean() < torch_losses[:10].mean()  # it trained (memorises noise)
    np.testing.assert_allclose(flax_losses, torch_losses, rtol=0, atol=TRAJECTORY_ATOL)
    for key in CANONICAL_SHAPES:
        np.testing.assert_allclose(flax_params[key], torch_params[key], rtol=0,
                                   atol=TRAJECTORY_ATOL, err_msg=key)

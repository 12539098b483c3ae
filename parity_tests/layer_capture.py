"""What each framework computes at every layer of one forward and backward pass: the outputs of
its convolutions and linear layers, the gradients of the loss at those outputs, the weight
gradients and the loss, all float32 NumPy in torch's layouts (NCHW, canonical keys), for the
referee's per-layer checks (`referee/layers.py`)."""

import jax
import numpy as np
import torch
from flax import linen as nn
from parity_helpers import flax_state, to_numpy_batch, torch_state

from flax_impl import backend as flax_backend
from flax_impl import convert
from mnist_common.weights import CANONICAL_SHAPES

# Each convolution's and each linear layer's output, and the module that computes it.
TORCH_MODULES = {"z1": "layer.0", "z2": "layer.2", "z3": "layer.5", "z4": "fc_layer.0",
                 "z5": "fc_layer.2"}


def _nchw(value):
    value = np.asarray(value)
    return value.transpose(0, 3, 1, 2) if value.ndim == 4 else value  # NHWC -> NCHW


def torch_layers(weights, batch):
    """{"loss", "z", "dz", "grads"} of torch's module on a host batch (images, labels)."""
    model, outputs = torch_state(weights).model, {}
    modules = dict(model.named_modules())

    def keep(name):
        def hook(module, args, result):
            result.retain_grad()
            outputs[name] = result
        return hook

    for name, key in TORCH_MODULES.items():
        modules[key].register_forward_hook(keep(name))
    images, labels = map(torch.as_tensor, batch)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    named = dict(model.named_parameters())
    return {"loss": loss.item(),
            "z": {name: out.detach().numpy().copy() for name, out in outputs.items()},
            "dz": {name: out.grad.numpy().copy() for name, out in outputs.items()},
            "grads": {key: named[key].grad.numpy().copy() for key in CANONICAL_SHAPES}}


def flax_layers(weights, batch):
    """The same for Flax: the engine's loss; the gradients at the layers' outputs are those of
    a zero added to each output (a method interceptor), which leaves every value unchanged."""
    state = flax_state(weights)
    x, y = to_numpy_batch(*batch)
    modules = {convert.module_name(key): name for name, key in TORCH_MODULES.items()}

    def loss_fn(params, shifts):
        def add_shift(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            name = modules.get(context.module.name) if context.method_name == "__call__" else None
            return out if name is None else out + shifts[name]

        with nn.intercept_methods(add_shift):
            logits, captured = state.apply_fn({"params": params}, x, capture_intermediates=True,
                                              mutable=["intermediates"])
        outputs = {modules[m]: captured["intermediates"][m]["__call__"][0] for m in modules}
        return flax_backend.cross_entropy(logits, y), outputs

    shapes = jax.eval_shape(loss_fn, state.params, {n: 0.0 for n in TORCH_MODULES})[1]
    shifts = {name: np.zeros(s.shape, np.float32) for name, s in shapes.items()}
    loss_and_grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))
    (loss, outputs), (grads, d_shifts) = loss_and_grads(state.params, shifts)
    return {"loss": float(loss), "z": {n: _nchw(v) for n, v in outputs.items()},
            "dz": {n: _nchw(v) for n, v in d_shifts.items()},
            "grads": convert.params_to_canonical(jax.device_get(grads))}

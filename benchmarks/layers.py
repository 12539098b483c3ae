"""Each conv and linear layer alone, forward and forward+backward: torch's layer of the engine's
model vs a Flax layer jitted as the engine jits (`flax_impl.xla_cpu.jit` on the CPU) vs under a
plain `jax.jit` (XLA's default compiler options)."""

import dataclasses

import jax
import torch
from flax import linen

from benchmarks.timing import Candidate, status, time_interleaved, windows_load
from benchmarks.variants import flax_engine_differs
from flax_impl import xla_cpu
from mnist_common import architecture
from torch_impl import backend as torch_backend

NOTE = "layer.0 gets no input gradient (as in training); the others do"


def torch_layer_candidates(row, device, batch_size, module):
    """torch forward and forward+backward of one layer (NCHW input)."""
    x = torch.rand((batch_size, *row["input_shape"]), device=device.torch.device)
    grad = torch.rand((batch_size, *row["output_shape"]), device=device.torch.device)
    needs_input_grad = row["layer"] != "layer.0"  # the image needs no gradient in training
    x_grad = x.clone().requires_grad_(needs_input_grad)

    def forward():
        with torch.no_grad():
            return module(x)

    def forward_backward():
        module.zero_grad(set_to_none=True)
        module(x_grad).backward(grad)

    return (Candidate("torch", forward, device.torch_sync),
            Candidate("torch", forward_backward, device.torch_sync))


def _flax_layer(row, batch_size):
    """(module, input shape, output shape) of one layer, NHWC."""
    if row["kind"] == "conv":
        c_in, h, w = row["input_shape"]
        c_out, h_out, w_out = row["output_shape"]
        kernel = architecture.layer(row["layer"]).kernel
        module = linen.Conv(c_out, kernel_size=(kernel, kernel), padding="VALID")
        return module, (batch_size, h, w, c_in), (batch_size, h_out, w_out, c_out)
    module = linen.Dense(row["output_shape"][0])
    return module, (batch_size, *row["input_shape"]), (batch_size, *row["output_shape"])


def flax_layer_candidates(row, device, batch_size, name, jit):
    """Flax forward and forward+backward (vjp) of one layer (NHWC input), jitted by `jit`."""
    module, x_shape, y_shape = _flax_layer(row, batch_size)
    key_x, key_g, key_p = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.device_put(jax.random.uniform(key_x, x_shape), device.flax.device)
    grad = jax.device_put(jax.random.uniform(key_g, y_shape), device.flax.device)
    params = jax.device_put(module.init(key_p, x[:1]), device.flax.device)
    needs_input_grad = row["layer"] != "layer.0"

    forward = jit(module.apply)

    @jit
    def forward_backward(params, x, grad):
        if needs_input_grad:
            y, vjp = jax.vjp(module.apply, params, x)
        else:
            y, vjp = jax.vjp(lambda p: module.apply(p, x), params)
        return y, vjp(grad)  # y too: a linear layer's vjp does not need it, XLA would drop it

    return (Candidate(name, lambda: forward(params, x), device.jax_sync),
            Candidate(name, lambda: forward_backward(params, x, grad), device.jax_sync))


def layer_candidates(row, device, batch_size, torch_modules):
    """Forward candidates then forward+backward candidates of one layer, named impl/pass."""
    pairs = []
    if device.torch is not None:
        pairs.append(torch_layer_candidates(row, device, batch_size, torch_modules[row["layer"]]))
    if device.flax is not None:
        impls = {"flax": xla_cpu.jit}  # as the engine jits its train step
        if row["kind"] == "conv" and flax_engine_differs(device.flax):
            impls["xla-default"] = jax.jit  # XLA's default options beside the engine's
        pairs += [flax_layer_candidates(row, device, batch_size, name, jit)
                  for name, jit in impls.items()]
    return ([dataclasses.replace(f, name=f"{f.name}/forward") for f, _ in pairs]
            + [dataclasses.replace(b, name=f"{b.name}/forward_backward") for _, b in pairs])


def layer_entry(row, timed):
    """One row of the results: ms per pass and implementation, first calls, others' load."""
    entry = {**row, "forward_ms": {}, "forward_backward_ms": {}, "first_call_seconds": {},
             "other_load": max(windows_load(timed.values()), default=None)}
    for name, result in timed.items():
        impl, pass_ = name.split("/")
        if "error" in result:
            entry[f"{pass_}_ms"][impl] = {"error": result["error"]}
            continue
        per_call = result["seconds_per_call"]
        entry[f"{pass_}_ms"][impl] = {k: 1e3 * per_call[k] for k in ("median", "min", "max")}
        entry["first_call_seconds"][f"{impl}/{pass_}"] = result["first_call_seconds"]
    return entry


def measure_layers(device, settings, flops):
    """Each conv/linear layer alone at one batch size: torch vs Flax as the engine jits it vs
    Flax under a plain jax.jit."""
    batch_size = settings.layer_batch_size
    torch_modules = ({} if device.torch is None else
                     dict(torch_backend.create_model(device.torch).named_modules()))
    rows = []
    for row in flops["layers"]:
        status(f"[{device.kind}] layer {row['layer']} ({row['kind']}), batch {batch_size}")
        candidates = layer_candidates(row, device, batch_size, torch_modules)
        rows.append(layer_entry(row, time_interleaved(candidates, settings)))
    return {"batch_size": batch_size, "note": NOTE, "rows": rows}

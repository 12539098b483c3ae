"""Each layer alone: the referee's exact answer for the framework's OWN float32 inputs of that
layer, and the bound of that one operation's rounding.

`bounds.py` bounds a whole forward and backward pass, so its bounds carry every earlier layer's
rounding (and every ReLU or max-pool decision it could flip) down the chain: on the first layers
they are far larger than the values. Here each operation is fed what the framework itself fed it
(its activations, its upstream gradient), which the referee holds exactly (float32 values are
float64 values), so the bound is that operation's own rounding: gamma(n) * sum|terms|, with ReLU
and max-pool exact (a tie in a pool window, or a ReLU input of exactly 0, may route the gradient
either way: its whole size is the bound there).

The sums over the batch (a kernel's or bias's gradient: up to 64 x 24 x 24 = 36,864 terms of both
signs) cancel heavily, and the worst case gamma_n, linear in n, is then too wide to reject a 1 %
error. For those sums the bound is the probabilistic one of Higham and Mary (*A new approach to
probabilistic rounding error analysis*, SIAM J. Sci. Comput. 41, 2019, Thm. 3.1): with the
roundings modelled as independent and of mean zero, a sum of n terms in any order is within
gamma~_n(lambda) = exp(lambda sqrt(n) u + n u^2 / (1 - u)) - 1 times sum|terms| with probability
at least 1 - 2n exp(-lambda^2 (1 - u)^2 / 2); lambda = 8 puts that below 1e-9 per element at
n = 36,864. The model is an assumption about round-to-nearest, not a theorem (a sum that
stagnates, adding many tiny terms to a large one, can break it); every other bound here is the
worst case, and the smaller of the two is used. Nothing is fitted to a measurement.
"""

import numpy as np

from referee import bounds, network
from referee.bounds import U, gamma

LAMBDA = 8.0  # the probabilistic bound's confidence parameter (see above)
CONV_KEYS = {"z1": "layer.0", "z2": "layer.2", "z3": "layer.5"}
LINEAR_KEYS = {"z4": "fc_layer.0", "z5": "fc_layer.2"}


def probable_gamma(n):
    """gamma~_n(LAMBDA) of Higham and Mary, or gamma_n where that is smaller."""
    return min(gamma(n), float(np.expm1(LAMBDA * np.sqrt(n) * U + n * U * U / (1 - U))))


def _inputs(z, x):
    """{layer output name: that layer's input}, made from the framework's float32 outputs by
    ReLU and max-pool (both exact in float32), and the pools' inputs a2, a3 and output p3."""
    a = {name: network.relu(value) for name, value in z.items()}
    p2 = network.pool_windows(a["z2"]).max(axis=-1)
    p3 = network.pool_windows(a["z3"]).max(axis=-1)  # (N, 64, 3, 3)
    return {"z1": x, "z2": a["z1"], "z3": p2, "z4": p3.reshape(len(x), -1), "z5": a["z4"],
            "a2": a["z2"], "a3": a["z3"], "p3": p3}


def forward(params, x, z):
    """{"z1".."z5": (exact, bound)}: each layer's output from the framework's own input."""
    inputs, out = _inputs(z, x), {}
    for name, key in {**CONV_KEYS, **LINEAR_KEYS}.items():
        weight, bias = params[f"{key}.weight"], params[f"{key}.bias"]
        a, zero = inputs[name], np.zeros_like(inputs[name])
        if name in CONV_KEYS:
            out[name] = (network.conv(a, weight) + bias[:, None, None],
                         bounds.conv_bound(a, zero, weight, bias))
        else:
            out[name] = (a @ weight.T + bias, bounds.linear_bound(a, zero, weight, bias))
    return out


def _below(d_exact, e_out, z, z_name, pool_input=None):
    """From a layer's input gradient (exact, bound) to the gradient at the previous layer's
    output: the max-pool's routing (on the framework's activations) and the ReLU's mask."""
    if pool_input is not None:
        e_out = bounds.pool_back(d_exact, e_out, pool_input, np.zeros_like(pool_input))
        d_exact = network.maxpool_grad(d_exact, pool_input)
    return d_exact * (z[z_name] > 0), bounds.relu_back(d_exact, e_out, z[z_name],
                                                       np.zeros_like(z[z_name]))


def backward(params, x, z, dz, labels):
    """{name: (exact, bound)} for the loss, the gradient at each layer's output ("dz1".."dz5",
    each from the framework's gradient one layer up) and the ten weight gradients (each from the
    framework's gradient at that layer's output and its input)."""
    inputs = _inputs(z, x)
    logits, no_error = {"z5": z["z5"]}, {"z5": np.zeros_like(z["z5"])}
    out = {"loss": (network.loss(z["z5"], labels), bounds.loss_bound(logits, no_error, labels)),
           "dz5": (network.logits_grad(z["z5"], labels),
                   bounds.logits_grad_bound(logits, no_error, labels))}
    below = {"z5": "z4", "z4": "z3", "z3": "z2", "z2": "z1"}
    pooled = {"z4": inputs["a3"], "z3": inputs["a2"]}
    for name in ("z5", "z4", "z3", "z2", "z1"):
        key, grad, a = ({**CONV_KEYS, **LINEAR_KEYS}[name], dz[name], inputs[name])
        weight, zero_a, zero_g = params[f"{key}.weight"], np.zeros_like(a), np.zeros_like(grad)
        if name in CONV_KEYS:
            e_in, e_w, e_b = bounds.conv_back(grad, zero_g, a, zero_a, weight, probable_gamma)
            exact = (network.conv_weight_grad(grad, a), grad.sum((0, 2, 3)),
                     network.conv_input_grad(grad, weight) if name in below else None)
        else:
            e_in, e_w, e_b = bounds.linear_back(grad, zero_g, a, zero_a, weight, probable_gamma)
            exact = (grad.T @ a, grad.sum(0), grad @ weight)
        out[f"{key}.weight"], out[f"{key}.bias"] = (exact[0], e_w), (exact[1], e_b)
        if name in below:
            d_in = exact[2]
            if name == "z4":  # f (N, 576) -> p3 (N, 64, 3, 3), (C, H, W) order
                d_in, e_in = (v.reshape(inputs["p3"].shape) for v in (d_in, e_in))
            out["d" + below[name]] = _below(d_in, e_in, z, below[name], pooled.get(name))
    return out


def references(params, x, z, dz, labels):
    """Every per-layer (exact, bound), float64, from the framework's float32 x (N, 1, 28, 28),
    outputs z (NCHW) and gradients dz at those outputs, keyed z1..z5, loss, dz1..dz5 and the
    canonical weight keys."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    z = {k: np.asarray(v, np.float64) for k, v in z.items()}
    dz = {k: np.asarray(v, np.float64) for k, v in dz.items()}
    return {**forward(p, x, z), **backward(p, x, z, dz, labels)}

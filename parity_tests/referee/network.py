"""The tutorial's CNN in float64, forward and backward, from the equations.

    z1 = conv(x, K1) + b1      (N, 16, 24, 24)    a1 = relu(z1)
    z2 = conv(a1, K2) + b2     (N, 32, 20, 20)    a2 = relu(z2)    p2 = maxpool(a2)  (N, 32, 10, 10)
    z3 = conv(p2, K3) + b3     (N, 64, 6, 6)      a3 = relu(z3)    p3 = maxpool(a3)  (N, 64, 3, 3)
    f  = p3 flattened per example in (C, H, W) order            (N, 576)
    z4 = f W4^T + b4           (N, 100)           a4 = relu(z4)
    z5 = a4 W5^T + b5          (N, 10)  the logits
    loss = mean_n (log sum_k exp z5[n, k] - z5[n, y_n])

conv is a 5x5 "valid" cross-correlation (no kernel flip), maxpool takes the largest of each
2x2 window (stride 2). Weights use the canonical keys and torch layouts (`layer.0.weight`
(16, 1, 5, 5) ... `fc_layer.2.bias` (10,)).
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

KERNEL = 5
CONVS = ("layer.0", "layer.2", "layer.5")
LINEARS = ("fc_layer.0", "fc_layer.2")


def windows(x):
    """(N, C, H, W) -> (N, C, H-4, W-4, 5, 5): every 5x5 patch (a view)."""
    return sliding_window_view(x, (KERNEL, KERNEL), axis=(2, 3))


def conv(x, kernel):
    """Valid cross-correlation: out[n,o,h,w] = sum_{c,i,j} x[n,c,h+i,w+j] kernel[o,c,i,j]."""
    out = np.tensordot(windows(x), kernel, axes=([1, 4, 5], [1, 2, 3]))  # (N, Ho, Wo, O)
    return out.transpose(0, 3, 1, 2)


def conv_input_grad(dout, kernel):
    """d/dx of sum(dout * conv(x, kernel)): each output position's gradient, weighted by the
    kernel, added back onto the 5x5 patch of x it was computed from."""
    n, _, h_out, w_out = dout.shape
    patches = np.tensordot(dout, kernel, axes=([1], [0]))  # (N, Ho, Wo, C, 5, 5)
    out = np.zeros((n, h_out + KERNEL - 1, w_out + KERNEL - 1, kernel.shape[1]))
    for i in range(KERNEL):
        for j in range(KERNEL):
            out[:, i:i + h_out, j:j + w_out] += patches[..., i, j]
    return out.transpose(0, 3, 1, 2)  # (N, C, H, W)


def conv_weight_grad(dout, x):
    """d/dkernel of sum(dout * conv(x, kernel)): sum over examples and positions."""
    return np.tensordot(dout, windows(x), axes=([0, 2, 3], [0, 2, 3]))  # (O, C, 5, 5)


def pool_windows(x):
    """(N, C, H, W) -> (N, C, H/2, W/2, 4): each 2x2 window's four entries."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(
        n, c, h // 2, w // 2, 4)


def unpool(per_window):
    """(N, C, H/2, W/2, 4) -> (N, C, H, W): the inverse arrangement of `pool_windows`."""
    n, c, h, w, _ = per_window.shape
    return per_window.reshape(n, c, h, w, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(
        n, c, 2 * h, 2 * w)


def maxpool_grad(dout, x):
    """The gradient of a 2x2 max-pool: each window's gradient to its (first) largest entry."""
    win = pool_windows(x)
    first = win.argmax(axis=-1)[..., None]
    routed = np.zeros_like(win)
    np.put_along_axis(routed, first, dout[..., None], axis=-1)
    return unpool(routed)


def relu(x):
    return np.maximum(x, 0.0)


def forward(params, x):
    """Every intermediate of the forward pass, float64, keyed by the names above."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    acts = {"x": x}
    acts["z1"] = conv(x, p["layer.0.weight"]) + p["layer.0.bias"][:, None, None]
    acts["a1"] = relu(acts["z1"])
    acts["z2"] = conv(acts["a1"], p["layer.2.weight"]) + p["layer.2.bias"][:, None, None]
    acts["a2"] = relu(acts["z2"])
    acts["p2"] = pool_windows(acts["a2"]).max(axis=-1)
    acts["z3"] = conv(acts["p2"], p["layer.5.weight"]) + p["layer.5.bias"][:, None, None]
    acts["a3"] = relu(acts["z3"])
    acts["p3"] = pool_windows(acts["a3"]).max(axis=-1)
    acts["f"] = acts["p3"].reshape(len(x), -1)  # (N, 576) in (C, H, W) order
    acts["z4"] = acts["f"] @ p["fc_layer.0.weight"].T + p["fc_layer.0.bias"]
    acts["a4"] = relu(acts["z4"])
    acts["z5"] = acts["a4"] @ p["fc_layer.2.weight"].T + p["fc_layer.2.bias"]
    return acts


def log_sum_exp(logits):
    top = logits.max(axis=1)
    return top + np.log(np.exp(logits - top[:, None]).sum(axis=1))


def loss(logits, labels):
    """Mean cross-entropy over the batch."""
    return float(np.mean(log_sum_exp(logits) - logits[np.arange(len(labels)), labels]))


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def logits_grad(logits, labels):
    """d loss / d logits = (softmax - one_hot) / N."""
    grad = softmax(logits)
    grad[np.arange(len(labels)), labels] -= 1.0
    return grad / len(labels)


def backward(params, acts, labels):
    """Every gradient, canonical keys, float64; also the intermediates' gradients ("d<name>")."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    g, d = {}, {"z5": logits_grad(acts["z5"], labels)}
    g["fc_layer.2.weight"], g["fc_layer.2.bias"] = d["z5"].T @ acts["a4"], d["z5"].sum(0)
    d["a4"] = d["z5"] @ p["fc_layer.2.weight"]
    d["z4"] = d["a4"] * (acts["z4"] > 0)
    g["fc_layer.0.weight"], g["fc_layer.0.bias"] = d["z4"].T @ acts["f"], d["z4"].sum(0)
    d["p3"] = (d["z4"] @ p["fc_layer.0.weight"]).reshape(acts["p3"].shape)
    d["a3"] = maxpool_grad(d["p3"], acts["a3"])
    d["z3"] = d["a3"] * (acts["z3"] > 0)
    g["layer.5.weight"] = conv_weight_grad(d["z3"], acts["p2"])
    g["layer.5.bias"] = d["z3"].sum((0, 2, 3))
    d["p2"] = conv_input_grad(d["z3"], p["layer.5.weight"])
    d["a2"] = maxpool_grad(d["p2"], acts["a2"])
    d["z2"] = d["a2"] * (acts["z2"] > 0)
    g["layer.2.weight"] = conv_weight_grad(d["z2"], acts["a1"])
    g["layer.2.bias"] = d["z2"].sum((0, 2, 3))
    d["a1"] = conv_input_grad(d["z2"], p["layer.2.weight"])
    d["z1"] = d["a1"] * (acts["z1"] > 0)
    g["layer.0.weight"] = conv_weight_grad(d["z1"], acts["x"])
    g["layer.0.bias"] = d["z1"].sum((0, 2, 3))
    return g, d

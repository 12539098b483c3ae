"""How far a float32 framework may be from the referee: a running error bound, element by element.

The model of float32 arithmetic (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 2-3):
every operation is exact then rounded, fl(a op b) = (a op b)(1 + d) with |d| <= u = 2^-24; a sum
of n terms in ANY order (sequential, blocked, a GEMM's tiles, a tree) is within gamma_n * sum|terms|
of the exact sum, gamma_n = n u / (1 - n u); exp and log are within 2 ulps (4u relative, or 4u of
|log| absolute). The bounds are first order in u (terms of order u^2 are below float64's own
rounding at these sizes) and hold for every summation order, so they do not depend on which
kernel a framework picks, only on it computing the same sums (a Winograd or FFT convolution
would not be covered). Nothing here is fitted to a measurement.

Where the rounding can flip a decision the bound says so instead of failing: a ReLU input within
its bound of 0 may pass its gradient or not; a max-pool window whose runner-up is within the two
entries' bounds of the maximum may route its gradient to either. There the bound is the whole
gradient that may or may not arrive.

Inputs: the framework's pixels are fl(k / 255), within u * x of the referee's k / 255. The weights
are float32 values held exactly by both, so they carry no error.
"""

import numpy as np

from referee import network

U = 2.0**-24  # float32's unit roundoff


def gamma(n):
    """The relative bound on a float32 sum of n terms, in any order."""
    return n * U / (1 - n * U)


def conv_bound(a, err, kernel, bias):
    """|z_f32 - z| for z = conv(a, K) + b, with |a_f32 - a| <= err."""
    k, fan_in = np.abs(kernel), kernel[0].size + 1
    return network.conv(err, k) + gamma(fan_in) * (network.conv(np.abs(a) + err, k) + np.abs(bias)[
        :, None, None])


def linear_bound(a, err, weight, bias):
    w = np.abs(weight)
    return err @ w.T + gamma(weight.shape[1] + 1) * ((np.abs(a) + err) @ w.T + np.abs(bias))


def relu_bound(z, err):
    """relu is 1-Lipschitz; where z < -err both sides compute exactly 0."""
    return np.where(z >= -err, err, 0.0)


def pool_bound(err):
    """|max(a_f32) - max(a)| <= max |a_f32 - a| over the window."""
    return network.pool_windows(err).max(axis=-1)


def forward_bounds(params, acts):
    """{name: elementwise bound} for every intermediate of `network.forward`."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    e = {"x": U * np.abs(acts["x"])}
    layers = (("z1", "x", "layer.0"), ("z2", "a1", "layer.2"), ("z3", "p2", "layer.5"))
    for z, a, key in layers:
        e[z] = conv_bound(acts[a], e[a], p[f"{key}.weight"], p[f"{key}.bias"])
        e["a" + z[1]] = relu_bound(acts[z], e[z])
        if z != "z1":
            e["p" + z[1]] = pool_bound(e["a" + z[1]])
    e["f"] = e["p3"].reshape(acts["f"].shape)
    e["z4"] = linear_bound(acts["f"], e["f"], p["fc_layer.0.weight"], p["fc_layer.0.bias"])
    e["a4"] = relu_bound(acts["z4"], e["z4"])
    e["z5"] = linear_bound(acts["a4"], e["a4"], p["fc_layer.2.weight"], p["fc_layer.2.bias"])
    return e


def _softmax_terms(logits):
    """Per example: d = z - max z, log s (s = sum exp d), and p's relative rounding bound rho.

    p = exp(d - log s): d rounds by u|d|, exp adds 4u, s is a 10-term sum of values each off by
    u|d| + 4u (gamma_9 more for the sum), log adds 4u|log s|; three more roundings for -, /, -.
    """
    d = logits - logits.max(axis=1, keepdims=True)
    log_s = np.log(np.exp(d).sum(axis=1))
    width = np.abs(d).max(axis=1)
    rho = U * (3 * width + 4 * np.abs(log_s) + 11) + gamma(9)
    return d, log_s, rho


def loss_bound(acts, err, labels):
    """|loss_f32 - loss| for the mean cross-entropy of the logits z5 (bound err["z5"])."""
    z, ez = acts["z5"], err["z5"]
    rows = np.arange(len(labels))
    d, log_s, rho = _softmax_terms(z)
    per_example = log_s - d[rows, labels]  # log s - (z_y - max): the loss of each example
    # log-sum-exp is 1-Lipschitz in the max norm; z_y's own error; then the rounding above.
    e_example = ez.max(axis=1) + ez[rows, labels] + rho + U * np.abs(per_example)
    return float(e_example.mean() + gamma(len(labels)) * np.abs(per_example).mean())


def linear_back(grad, e_grad, a, e_a, weight, batch_gamma=gamma):
    """Bounds of (input grad, weight grad, bias grad) of a linear layer; `batch_gamma` bounds
    the sums over the batch."""
    w, g, x = np.abs(weight), np.abs(grad) + e_grad, np.abs(a) + e_a
    n = len(grad)
    e_input = e_grad @ w + gamma(weight.shape[0]) * (g @ w)
    e_weight = e_grad.T @ x + np.abs(grad).T @ e_a + batch_gamma(n) * (g.T @ x)
    e_bias = e_grad.sum(0) + batch_gamma(n) * g.sum(0)
    return e_input, e_weight, e_bias


def conv_back(grad, e_grad, a, e_a, kernel, batch_gamma=gamma):
    """Bounds of (input grad, kernel grad, bias grad) of a valid 5x5 convolution; `batch_gamma`
    bounds the sums over examples and positions."""
    k, g, x = np.abs(kernel), np.abs(grad) + e_grad, np.abs(a) + e_a
    terms = grad.shape[0] * grad.shape[2] * grad.shape[3]  # examples x output positions
    e_input = gamma(kernel.shape[0] * 25) * network.conv_input_grad(g, k)
    e_kernel = batch_gamma(terms) * network.conv_weight_grad(g, x)
    if e_grad.any():  # error arriving from above (none for a layer checked alone)
        e_input = e_input + network.conv_input_grad(e_grad, k)
        e_kernel = e_kernel + network.conv_weight_grad(e_grad, x)
    if e_a.any():
        e_kernel = e_kernel + network.conv_weight_grad(np.abs(grad), e_a)
    e_bias = e_grad.sum((0, 2, 3)) + batch_gamma(terms) * g.sum((0, 2, 3))
    return e_input, e_kernel, e_bias


def relu_back(grad, e_grad, z, e_z):
    """Where z's sign is certain the mask is exact; within its bound of 0 the gradient may or may
    not pass."""
    return e_grad * (z > 0) + (np.abs(grad) + e_grad) * (np.abs(z) <= e_z)


def pool_back(grad, e_grad, a, e_a):
    """The gradient goes to the window's maximum; every entry that could be the maximum under
    rounding may receive all of it or none of it."""
    win, e_win = network.pool_windows(a), network.pool_windows(e_a)
    first = win.argmax(axis=-1)[..., None]
    top, e_top = np.take_along_axis(win, first, -1), np.take_along_axis(e_win, first, -1)
    candidates = win >= top - e_top - e_win
    certain = candidates.sum(-1, keepdims=True) == 1
    routed = np.where(certain, e_grad[..., None], np.abs(grad)[..., None] + e_grad[..., None])
    return network.unpool(np.where(candidates, routed, 0.0))


def logits_grad_bound(acts, err, labels):
    """|dz5_f32 - dz5| for dz5 = (softmax(z5) - one_hot) / N.

    softmax's Jacobian is p_k (delta_kj - p_j), so an error e_j in z moves p_k by at most
    p_k (e_k + max_j e_j); p's own rounding is rho * p; subtracting 1 and dividing by N add 2u.
    """
    z, ez = acts["z5"], err["z5"]
    _, _, rho = _softmax_terms(z)
    p = network.softmax(z)
    grad = network.logits_grad(z, labels)
    return (p * (ez + ez.max(axis=1, keepdims=True)) + p * rho[:, None]) / len(labels) + \
        2 * U * np.abs(grad)


def gradient_bounds(params, acts, d, err, labels):
    """{canonical key: elementwise bound} of every gradient (d: `network.backward`'s "d<name>")."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    b, e = {}, {"z5": logits_grad_bound(acts, err, labels)}
    e["a4"], b["fc_layer.2.weight"], b["fc_layer.2.bias"] = linear_back(
        d["z5"], e["z5"], acts["a4"], err["a4"], p["fc_layer.2.weight"])
    e["z4"] = relu_back(d["a4"], e["a4"], acts["z4"], err["z4"])
    e["f"], b["fc_layer.0.weight"], b["fc_layer.0.bias"] = linear_back(
        d["z4"], e["z4"], acts["f"], err["f"], p["fc_layer.0.weight"])
    e["p3"] = e["f"].reshape(acts["p3"].shape)
    e["a3"] = pool_back(d["p3"], e["p3"], acts["a3"], err["a3"])
    e["z3"] = relu_back(d["a3"], e["a3"], acts["z3"], err["z3"])
    e["p2"], b["layer.5.weight"], b["layer.5.bias"] = conv_back(
        d["z3"], e["z3"], acts["p2"], err["p2"], p["layer.5.weight"])
    e["a2"] = pool_back(d["p2"], e["p2"], acts["a2"], err["a2"])
    e["z2"] = relu_back(d["a2"], e["a2"], acts["z2"], err["z2"])
    e["a1"], b["layer.2.weight"], b["layer.2.bias"] = conv_back(
        d["z2"], e["z2"], acts["a1"], err["a1"], p["layer.2.weight"])
    e["z1"] = relu_back(d["a1"], e["a1"], acts["z1"], err["z1"])
    _, b["layer.0.weight"], b["layer.0.bias"] = conv_back(
        d["z1"], e["z1"], acts["x"], err["x"], p["layer.0.weight"])
    return b

"""Adam in float64 (the tutorial's: lr 2e-4, betas 0.9 / 0.999, eps 1e-8 outside the square
root, no weight decay, no amsgrad), with a bound on what a float32 implementation may add.

    m_t = b1 m + (1 - b1) g      v_t = b2 v + (1 - b2) g^2
    p_t = p - lr (m_t / c1) / (sqrt(v_t / c2) + eps),   c1 = 1 - b1^t, c2 = 1 - b2^t

The bound (u = 2^-24, first order, as `bounds.py`): each product, sum, division and square root
rounds by u; the constants b1, b2 are themselves rounded to float32 (relative u), which 1 - b and
1 - b^t amplify: a float32 `1 - b2^t` at t = 1 is off by up to (2 t b^t + 1) u / (1 - b^t) ~
2000 u relative. Both frameworks are fed the same float32 gradient `g`, so the gradient carries no
error here. Errors in m and v decay with b1 and b2 like the moments themselves.
"""

from typing import NamedTuple

import numpy as np

from referee.bounds import U

LR, BETA1, BETA2, EPS = 2e-4, 0.9, 0.999, 1e-8


class AdamState(NamedTuple):
    """Per canonical key: the moments, the weights, and the bounds on a float32 run's errors."""

    step: int
    params: dict  # float64 values of the weights
    m: dict
    v: dict
    err_params: dict
    err_m: dict
    err_v: dict


def init(params):
    """Adam before its first step, from float32 weights (held exactly: no error)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    zeros = {k: np.zeros_like(v) for k, v in p.items()}
    return AdamState(0, p, zeros, dict(zeros), dict(zeros), dict(zeros), dict(zeros))


def _one_minus_error(beta):
    """Relative error of 1 - b computed from float32's b."""
    return U * (beta / (1 - beta) + 1)


def _correction_error(beta, t):
    """Relative error of a float32 bias correction 1 - b^t (b rounded, the power rounded)."""
    return U * (2 * t * beta**t + 1) / (1 - beta**t)


def _update(m, v, err_m, err_v, t):
    """(update, its bound): lr * m_hat / (sqrt(v_hat) + eps)."""
    c1, c2 = 1 - BETA1**t, 1 - BETA2**t
    m_hat, v_hat = m / c1, v / c2
    err_m_hat = err_m / c1 + (_correction_error(BETA1, t) + U) * np.abs(m_hat)
    err_v_hat = err_v / c2 + (_correction_error(BETA2, t) + U) * v_hat
    root = np.sqrt(v_hat)
    # sqrt's sensitivity is 1 / (2 sqrt); near 0 sqrt(err) bounds it instead.
    with np.errstate(divide="ignore", invalid="ignore"):
        err_root = np.where(root > 0, err_v_hat / (2 * root), 0.0)
    err_root = np.minimum(err_root, np.sqrt(err_v_hat)) + U * root
    denom = root + EPS
    err_denom = err_root + U * denom
    update = LR * m_hat / denom
    err_update = LR * (err_m_hat / denom + np.abs(m_hat) * err_denom / denom**2) + \
        3 * U * np.abs(update)
    return update, err_update


def step(state, grads):
    """One Adam step on float32 gradients (canonical keys): the new AdamState."""
    t = state.step + 1
    new = AdamState(t, {}, {}, {}, {}, {}, {})
    for key, grad in grads.items():
        g = np.asarray(grad, np.float64)
        m, v = state.m[key], state.v[key]
        new.m[key] = BETA1 * m + (1 - BETA1) * g
        new.v[key] = BETA2 * v + (1 - BETA2) * g * g
        new.err_m[key] = BETA1 * state.err_m[key] + 4 * U * BETA1 * np.abs(m) + \
            (1 - BETA1) * np.abs(g) * (_one_minus_error(BETA1) + 2 * U)
        new.err_v[key] = BETA2 * state.err_v[key] + 4 * U * BETA2 * v + \
            (1 - BETA2) * g * g * (_one_minus_error(BETA2) + 3 * U)
        update, err_update = _update(new.m[key], new.v[key], new.err_m[key], new.err_v[key], t)
        new.params[key] = state.params[key] - update
        new.err_params[key] = state.err_params[key] + err_update + U * np.abs(new.params[key])
    return new

"""Computations written out element by element, independent of the referee's vectorised ones."""

import itertools

import numpy as np


def loop_conv(x, kernel):
    """out[n,o,h,w] = sum_{c,i,j} x[n,c,h+i,w+j] kernel[o,c,i,j], one element at a time."""
    n, c, h, w = x.shape
    o, k = kernel.shape[0], kernel.shape[2]
    out = np.zeros((n, o, h - k + 1, w - k + 1))
    for b, f, r, s in itertools.product(range(n), range(o), range(h - k + 1), range(w - k + 1)):
        out[b, f, r, s] = (x[b, :, r:r + k, s:s + k] * kernel[f]).sum()
    return out


def matrix_of(linear, shape):
    """The matrix of a linear map on arrays of `shape`: one column per unit input."""
    columns = []
    for index in range(int(np.prod(shape))):
        unit = np.zeros(int(np.prod(shape)))
        unit[index] = 1.0
        columns.append(linear(unit.reshape(shape)).ravel())
    return np.stack(columns, axis=1)

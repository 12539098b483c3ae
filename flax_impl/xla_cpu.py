"""What makes XLA:CPU fast for this model: a compiler option for the train step, and a pool.

`COMPILER_OPTIONS` (through `jit`, which `flax_impl.backend` uses for its train step and scan)
turns off XLA:CPU's YNNPACK fusions, so that XLA runs its own (Eigen) convolutions. YNNPACK
computes a gradient's convolutions several times slower for this model's layers, while for a
forward-only graph it is faster, so evaluation and logits are jitted plainly. The option changes
the order of float32 sums inside the convolutions, not what is computed; other backends ignore
it. The figures, and what else was tried: docs/speed.md.

`max_pool`: `create_model` gives the CNN this 2x2 max-pool on the CPU (a GPU gets Flax's).
XLA:CPU expands the gradient of `reduce_window` max (`select_and_scatter`) into a variadic
reduce_window over four int32 index arrays plus a scatter, several times slower than this one
(docs/speed.md), with the same values and gradients bit for bit.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

# No YNNPACK fusions at all in graphs with a gradient: XLA runs its own (Eigen) convolutions.
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def jit(fn, **kwargs):
    """`jax.jit` with `COMPILER_OPTIONS`, for graphs with a gradient: `@jit`, or
    `jit(fn, donate_argnums=0)`."""
    return jax.jit(fn, compiler_options=COMPILER_OPTIONS, **kwargs)


def max_pool(inputs, window_shape, strides=None, padding="VALID"):
    """`flax.linen.max_pool`'s signature and result; the 2x2 stride-2 VALID NHWC case reshaped.

    The forward is a reshape and a max over the 2x2 window; the backward routes each output
    gradient to the first maximum of its window in row-major order, which is what
    select_and_scatter (and torch's max_pool2d) does: the same values and gradients, bit for bit.
    """
    if (inputs.ndim == 4 and tuple(window_shape) == (2, 2)
            and strides is not None and tuple(strides) == (2, 2)
            and isinstance(padding, str) and padding.upper() == "VALID"
            and inputs.shape[1] % 2 == 0 and inputs.shape[2] % 2 == 0
            and jnp.issubdtype(inputs.dtype, jnp.floating)):
        return _max_pool_2x2(inputs)
    return nn.max_pool(inputs, window_shape, strides=strides, padding=padding)


def _windows_2x2(x):
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def _max_pool_2x2(x):
    return _windows_2x2(x).max(axis=(2, 4))


def _max_pool_2x2_fwd(x):
    return _max_pool_2x2(x), x


def _max_pool_2x2_bwd(x, g):
    y = _max_pool_2x2(x)
    win = _windows_2x2(x)
    zero = jnp.zeros_like(g)
    taken = None
    parts = []
    for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)):
        hit = win[:, :, a, :, b, :] == y
        first = hit if taken is None else hit & ~taken
        taken = hit if taken is None else taken | hit
        parts.append(jnp.where(first, g, zero))
    # A window whose maximum is NaN equals none of its entries and passes no gradient.
    top = jnp.stack(parts[:2], axis=3)
    bottom = jnp.stack(parts[2:], axis=3)
    return (jnp.stack([top, bottom], axis=2).reshape(x.shape),)


_max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)

"""Drop-in `lax.conv_general_dilated` and `nn.max_pool` that are fast on XLA:CPU for this model.

`flax_impl.train.create_model` gives the CNN these two when it trains on the CPU; on a GPU it gets
the stock ones. Both return XLA's numbers: see `tests/test_cpu_conv.py`.

Why: on the 2-core CPU, at batch 256, XLA's convolution of the 16->32 layer (24x24 input) takes
~127 ms forward and ~181 ms for the weight gradient, and the gradient of XLA's 2x2 max-pool
(select_and_scatter, expanded into a reduce_window over four int32 index arrays plus a scatter)
~90 ms; torch eager does the whole training step in ~80 ms. The arithmetic is cheap (a float32
GEMM runs at ~200 GFLOP/s); moving memory is not: the layer's im2col patch matrix is 164 MB, and
on this machine every fresh buffer page costs a page fault, so it is never built whole.

Convolution (`conv_general_dilated`): specialised for NHWC input, HWIO kernel, NHWC output,
stride 1, VALID, no dilation, one group, float32; anything else goes to `lax.conv_general_dilated`
unchanged. For each layer shape `_plan` picks, from measurements, whether the forward pass, the
input gradient and the weight gradient each run as XLA's convolution or as GEMMs over batch chunks
(`lax.map`) whose patch matrix stays a few MB:
  forward      y  = patches(x) . w               (25 shifted slices side by side, (kh, kw, c)
                                                   order = the HWIO kernel's reshape order)
  weight grad  dw = sum over chunks patches(x)^T . g
  input grad   dx = col2im(g . w^T)              (each patch row added back at its 25 offsets)
A `jax.custom_vjp` ties the three together. Accumulation is float32 throughout; the sums are XLA's
products in another order (forward <= 5e-7, gradients <= 1e-6 relative to the largest entry).

Pool (`max_pool`): the 2x2 stride-2 VALID case is a reshape and a max; its gradient goes to the
first maximum of each window in row-major order, as XLA's select_and_scatter and torch's
max_pool2d do, so values and gradients are bit-identical. Other pools go to `nn.max_pool`.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")

# Largest patch matrix of one lax.map step: a few MB, well inside the 32 MB L3 (the batch-256
# patch matrix of the 16->32 layer is 164 MB; building it whole costs 5x the GEMM).
_CHUNK_BYTES = 4 << 20


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated`'s signature and result; chunked GEMMs for the model's case."""
    if _is_specialised(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                       dimension_numbers, feature_group_count, batch_group_count,
                       preferred_element_type):
        plan = _plan(lhs.shape, rhs.shape)
        if plan is not None:
            return _valid_conv(lhs, rhs, plan, precision)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)


def _all_ones(values):
    return values is None or all(int(v) == 1 for v in values)


def _is_specialised(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, batch_group_count,
                    preferred_element_type):
    """True for NHWC/HWIO/NHWC, stride 1, VALID, undilated, ungrouped float32 convolutions."""
    if getattr(lhs, "ndim", None) != 4 or getattr(rhs, "ndim", None) != 4:
        return False
    if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
        return False
    if preferred_element_type is not None and preferred_element_type != jnp.float32:
        return False
    if feature_group_count != 1 or batch_group_count != 1:
        return False
    if dimension_numbers is None:
        return False
    try:
        dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    except (TypeError, ValueError):
        return False
    if dims != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
        return False
    if len(window_strides) != 2 or not _all_ones(window_strides):
        return False
    if not _all_ones(lhs_dilation) or not _all_ones(rhs_dilation):
        return False
    if isinstance(padding, str):
        if padding.upper() != "VALID":
            return False
    elif tuple(tuple(int(p) for p in pair) for pair in padding) != ((0, 0), (0, 0)):
        return False
    _, height, width, channels = lhs.shape
    kh, kw, in_channels, _ = rhs.shape
    return in_channels == channels and kh <= height and kw <= width


class _Plan(NamedTuple):
    """How one layer's three parts run: "gemm" / "col2im" (chunked GEMMs) or "xla"."""

    forward: str
    input_grad: str
    weight_grad: str
    chunk: int  # images per lax.map step


def _plan(lhs_shape, rhs_shape):
    """The fastest measured way for this layer shape (2-core CPU, batch 256, median ms).

    - One input channel (28x28x1 -> 16): XLA's own convolution is already fast (forward 5.3,
      weight grad 4.0; the chunked GEMM forward takes 6.5): no custom path.
    - Large output maps (24x24x16 -> 20x20x32, 400 positions): forward as chunked GEMM 23.6
      (XLA 127), weight grad as chunked GEMM 28.0 (XLA 181); XLA's input grad (31.9) beats
      col2im (39.7) and a padded forward convolution (33.0).
    - Small output maps (10x10x32 -> 6x6x64, 36 positions): XLA's forward (11.6) is kept (the
      GEMM is no faster and sums in another order); input grad as col2im 11.8 (XLA 44), weight grad
      as chunked GEMM 11.7 (XLA 21.9).
    """
    _, height, width, channels = lhs_shape
    kh, kw, _, _ = rhs_shape
    if channels == 1:
        return None
    out_positions = (height - kh + 1) * (width - kw + 1)
    patch_bytes = out_positions * kh * kw * channels * 4  # one image's patch matrix
    chunk = 1
    while 2 * chunk * patch_bytes <= _CHUNK_BYTES:
        chunk *= 2
    if out_positions >= 100:
        return _Plan("gemm", "xla", "gemm", chunk)
    return _Plan("xla", "col2im", "gemm", chunk)


def _patches(x, kh, kw):
    """(b, h, w, c) -> (b, ho, wo, kh*kw*c): the kh*kw shifted windows side by side."""
    _, height, width, _ = x.shape
    ho, wo = height - kh + 1, width - kw + 1
    return jnp.concatenate(
        [x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)


def _chunks(a, chunk):
    """(n, ...) -> (ceil(n / chunk), chunk, ...), the last chunk padded with zeros."""
    count = -(-a.shape[0] // chunk)
    pad = count * chunk - a.shape[0]
    if pad:
        a = jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1))
    return a.reshape((count, chunk) + a.shape[1:])


def _map_chunks(fn, arrays, chunk):
    """fn over batch chunks of `arrays` (lax.map), results concatenated on the batch axis.

    A partial batch is padded to whole chunks (zeros) and the padding cut off again: one traced
    body instead of a second copy for the remainder, so compiling takes half as long."""
    batch = arrays[0].shape[0]
    if batch <= chunk:
        return fn(*arrays)
    out = lax.map(lambda parts: fn(*parts), tuple(_chunks(a, chunk) for a in arrays))
    return out.reshape((-1,) + out.shape[2:])[:batch]


def _sum_chunks(fn, arrays, chunk):
    """The sum over batch chunks of fn(chunk): lax.map of partial results, then one sum.

    Padding images are zeros and so are their gradients: they add nothing."""
    if arrays[0].shape[0] <= chunk:
        return fn(*arrays)
    return lax.map(lambda parts: fn(*parts), tuple(_chunks(a, chunk) for a in arrays)).sum(axis=0)


def _gemm_forward(x, w, chunk, precision):
    """y = patches(x) . w, chunk by chunk."""
    kh, kw, _, out_channels = w.shape
    w_mat = w.reshape(-1, out_channels)

    def one(xc):
        p = _patches(xc, kh, kw)
        y = jnp.dot(p.reshape(-1, p.shape[-1]), w_mat, precision=precision,
                    preferred_element_type=jnp.float32)
        return y.reshape(p.shape[:3] + (out_channels,))

    return _map_chunks(one, (x,), chunk)


def _gemm_weight_grad(x, g, w_shape, chunk, precision):
    """dw = sum over chunks of patches(x)^T . g."""
    kh, kw, _, out_channels = w_shape

    def one(xc, gc):
        p = _patches(xc, kh, kw)
        return jnp.dot(p.reshape(-1, p.shape[-1]).T, gc.reshape(-1, out_channels),
                       precision=precision, preferred_element_type=jnp.float32)

    return _sum_chunks(one, (x, g), chunk).reshape(w_shape)


def _col2im_input_grad(g, w, chunk, precision):
    """dx = col2im(g . w^T): each patch gradient added back at its kh*kw shifted positions."""
    kh, kw, in_channels, out_channels = w.shape
    w_t = w.reshape(-1, out_channels).T

    def one(gc):
        b, ho, wo, _ = gc.shape
        dp = jnp.dot(gc.reshape(-1, out_channels), w_t, precision=precision,
                     preferred_element_type=jnp.float32).reshape(b, ho, wo, kh, kw, in_channels)
        dx = None
        for i in range(kh):
            for j in range(kw):
                part = jnp.pad(dp[:, :, :, i, j, :],
                               ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
                dx = part if dx is None else dx + part
        return dx

    return _map_chunks(one, (g,), chunk)


def _xla_conv(x, w, precision):
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_NHWC,
                                    precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _valid_conv(x, w, plan, precision):
    if plan.forward == "gemm":
        return _gemm_forward(x, w, plan.chunk, precision)
    return _xla_conv(x, w, precision)


def _valid_conv_fwd(x, w, plan, precision):
    return _valid_conv(x, w, plan, precision), (x, w)


def _valid_conv_bwd(plan, precision, residuals, g):
    x, w = residuals
    if plan.input_grad == "xla" or plan.weight_grad == "xla":
        # Whichever of the two is not used here is removed by XLA as dead code.
        _, xla_vjp = jax.vjp(lambda a, b: _xla_conv(a, b, precision), x, w)
        xla_dx, xla_dw = xla_vjp(g)
    if plan.input_grad == "col2im":
        dx = _col2im_input_grad(g, w, plan.chunk, precision)
    else:
        dx = xla_dx
    if plan.weight_grad == "gemm":
        dw = _gemm_weight_grad(x, g, w.shape, plan.chunk, precision)
    else:
        dw = xla_dw
    return dx, dw


_valid_conv.defvjp(_valid_conv_fwd, _valid_conv_bwd)


def max_pool(inputs, window_shape, strides=None, padding="VALID"):
    """`flax.linen.max_pool`'s signature and result; the 2x2 stride-2 VALID NHWC case reshaped.

    XLA:CPU expands the gradient of `reduce_window` max (select_and_scatter) into a variadic
    reduce_window over four int32 index arrays plus a scatter: ~90 ms at (256, 20, 20, 32) on the
    2-core CPU. Here the forward is a reshape and a max over the 2x2 window, and the backward routes
    each output gradient to the first maximum of its window in row-major order, which is what
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

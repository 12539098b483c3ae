"""Canonical (torch-layout) NumPy arrays <-> Flax params, both ways, exactly.

conv kernels: OIHW <-> HWIO; dense kernels: (out, in) <-> (in, out); and the 576 inputs of
`fc_layer.0` reordered between torch's (C, H, W) flatten and Flax's NHWC (H, W, C) flatten.
Every map is a permutation of elements, so a round trip is bit-identical.
"""

import numpy as np

from mnist_common.architecture import CANONICAL_SHAPES, FLATTEN_SHAPE, LAYERS

CONV_KEYS = tuple(layer.key for layer in LAYERS if layer.kind == "conv")
DENSE_KEYS = tuple(layer.key for layer in LAYERS if layer.kind == "linear")
# HWC_FROM_CHW[j] = the torch (C, H, W) input index that Flax's j-th (H, W, C) input holds.
HWC_FROM_CHW = np.arange(np.prod(FLATTEN_SHAPE)).reshape(FLATTEN_SHAPE).transpose(1, 2, 0).ravel()


def module_name(key):
    """`layer.0` -> `layer_0`: the Flax module that holds a torch layer's weights."""
    return key.replace(".", "_")


def canonical_to_params(arrays):
    """Canonical arrays (torch layouts) -> a Flax params dict of NumPy float32 arrays."""
    params = {}
    for key in CONV_KEYS:
        params[module_name(key)] = {
            "kernel": np.ascontiguousarray(arrays[f"{key}.weight"].transpose(2, 3, 1, 0)),
            "bias": np.array(arrays[f"{key}.bias"]),
        }
    for key in DENSE_KEYS:
        kernel = arrays[f"{key}.weight"].T  # (in, out)
        if key == DENSE_KEYS[0]:  # its inputs are the flattened feature maps
            kernel = kernel[HWC_FROM_CHW]
        params[module_name(key)] = {"kernel": np.ascontiguousarray(kernel),
                                    "bias": np.array(arrays[f"{key}.bias"])}
    return params


def params_to_canonical(params):
    """A Flax params tree (jax or NumPy arrays) -> canonical arrays in torch layouts."""
    arrays = {}
    for key in CONV_KEYS:
        layer = params[module_name(key)]
        arrays[f"{key}.weight"] = np.ascontiguousarray(
            np.asarray(layer["kernel"]).transpose(3, 2, 0, 1))
        arrays[f"{key}.bias"] = np.array(layer["bias"])
    for key in DENSE_KEYS:
        layer = params[module_name(key)]
        kernel = np.asarray(layer["kernel"])
        if key == DENSE_KEYS[0]:
            unpermuted = np.empty_like(kernel)
            unpermuted[HWC_FROM_CHW] = kernel
            kernel = unpermuted
        arrays[f"{key}.weight"] = np.ascontiguousarray(kernel.T)
        arrays[f"{key}.bias"] = np.array(layer["bias"])
    return {k: arrays[k] for k in CANONICAL_SHAPES}

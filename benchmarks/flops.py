"""FLOPs per image, from the layer table both models check themselves against
(`mnist_common.architecture`), with XLA's own count of the stock Flax forward beside it."""

import jax
import jax.numpy as jnp

from benchmarks.timing import describe_error
from flax_impl.model import CNN as FlaxCNN
from mnist_common.architecture import FORWARD_MULTIPLY_ADDS, INPUT_SHAPE, LAYERS

CONVENTION = ("forward FLOPs = 2 x multiply-adds of each conv and linear layer (bias, ReLU, "
              "max-pool, softmax and loss not counted); training FLOPs = 3 x forward "
              "(backward = input gradient + weight gradient, each about one forward)")
XLA_CHECK_BATCH = 256


def layer_rows():
    """Each conv and linear layer: name, kind, shapes per image (C,H,W), multiply-adds."""
    return [{"layer": layer.key, "kind": layer.kind, "input_shape": list(layer.in_shape),
             "output_shape": list(layer.out_shape), "macs_per_image": layer.multiply_adds,
             "forward_flops_per_image": 2 * layer.multiply_adds} for layer in LAYERS]


def xla_forward_flops():
    """XLA's cost analysis of the stock Flax forward, per image (it adds bias, ReLU, pooling)."""
    channels, height, width = INPUT_SHAPE
    model, batch = FlaxCNN(), XLA_CHECK_BATCH
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, height, width, channels), jnp.float32))
    x = jax.ShapeDtypeStruct((batch, height, width, channels), jnp.float32)  # NHWC
    cost = jax.jit(model.apply).lower(params, x).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"] / batch


def flop_counts():
    """FLOPs per image (forward and training) and the per-layer breakdown."""
    forward = 2 * FORWARD_MULTIPLY_ADDS
    counts = {"convention": CONVENTION, "forward_per_image": forward,
              "train_per_image": 3 * forward, "layers": layer_rows()}
    try:
        counts["xla_cost_analysis_forward_per_image"] = xla_forward_flops()
    except Exception as err:
        counts["xla_cost_analysis_forward_per_image"] = None
        counts["xla_cost_analysis_error"] = describe_error(err)
    return counts

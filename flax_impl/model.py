"""The tutorial's CNN as a Flax Linen module; NHWC inside, torch's default initialisation."""

import math

import jax
from flax import linen as nn

# torch's default init for Conv2d and Linear is U(+-1/sqrt(fan_in)) for weights and biases:
# kaiming_uniform(a=sqrt(5)) gives bound sqrt(6 / ((1 + 5) * fan_in)) = 1 / sqrt(fan_in).
# variance_scaling(1/3, fan_in, uniform) has bound sqrt(3 * (1/3) / fan_in): the same.
torch_default_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_default_bias_init(fan_in):
    """U(+-1/sqrt(fan_in)), torch's bias init (it depends on the layer's fan-in)."""
    bound = 1 / math.sqrt(fan_in)

    def init(key, shape, dtype=jax.numpy.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(features, in_features, name):
    """A 5x5 valid convolution initialised like torch's nn.Conv2d."""
    return nn.Conv(features, kernel_size=(5, 5), padding="VALID", name=name,
                   kernel_init=torch_default_kernel_init,
                   bias_init=torch_default_bias_init(in_features * 5 * 5))


def dense(features, in_features, name):
    """A dense layer initialised like torch's nn.Linear."""
    return nn.Dense(features, name=name, kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(in_features))


class CNN(nn.Module):
    """conv 1->16->32->64 (5x5, VALID), two 2x2 max-pools, fc 576->100->10; NHWC input.

    Module names follow the torch state_dict keys (`layer.0` -> `layer_0`). Flax's default
    padding is SAME, which would give 7*7*64 = 3136 inputs to the first dense layer; the
    tutorial's convolutions are valid.
    """

    max_pool: object = None  # None: nn.max_pool

    @nn.compact
    def __call__(self, x):
        pool = self.max_pool or nn.max_pool
        x = conv(16, 1, "layer_0")(x)  # (N, 24, 24, 16)
        x = nn.relu(x)
        x = conv(32, 16, "layer_2")(x)  # (N, 20, 20, 32)
        x = nn.relu(x)
        x = pool(x, window_shape=(2, 2), strides=(2, 2))  # (N, 10, 10, 32)
        x = conv(64, 32, "layer_5")(x)  # (N, 6, 6, 64)
        x = nn.relu(x)
        x = pool(x, window_shape=(2, 2), strides=(2, 2))  # (N, 3, 3, 64)
        x = x.reshape((x.shape[0], -1))  # (N, 576), ordered (H, W, C); convert.py permutes
        x = dense(100, 576, "fc_layer_0")(x)
        x = nn.relu(x)
        x = dense(10, 100, "fc_layer_2")(x)  # (N, 10) logits
        return x

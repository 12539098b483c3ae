"""The tutorial's CNN stated once: every layer, its shapes and its canonical weight keys.

The shape tests check both models against `LAYERS` (parity_tests/test_model.py), the weight
file derives its keys and shapes from it, the Flax converter its layouts, and the benchmark its
FLOP count. To change a kernel size or
a channel count, change it here (and the two models' bodies); the shape tests say what else
disagrees.
"""

from typing import NamedTuple


class Layer(NamedTuple):
    """One layer with weights. Shapes are per example, NCHW (torch's layout)."""

    key: str  # canonical weight key prefix: the tutorial's state_dict name
    kind: str  # "conv" (valid, stride 1) or "linear"
    in_shape: tuple  # (C, H, W) for a conv, (features,) for a linear
    out_shape: tuple  # its output, before ReLU / pooling
    kernel: int = 0  # square kernel size of a conv

    @property
    def weight_shape(self):
        """torch layout: conv OIHW, linear (out, in)."""
        if self.kind == "conv":
            return (self.out_shape[0], self.in_shape[0], self.kernel, self.kernel)
        return (self.out_shape[0], self.in_shape[0])

    @property
    def fan_in(self):
        """Inputs to one output unit: torch's default init draws U(+-1/sqrt(fan_in))."""
        if self.kind == "conv":
            return self.in_shape[0] * self.kernel * self.kernel
        return self.in_shape[0]

    @property
    def multiply_adds(self):
        """Multiply-adds of one example's forward pass through this layer (bias excluded)."""
        out = 1
        for size in self.out_shape:
            out *= size
        weights = 1
        for size in self.weight_shape[1:]:
            weights *= size
        return out * weights


KERNEL = 5  # the tutorial's kernel_size for every convolution
INPUT_SHAPE = (1, 28, 28)  # (C, H, W)
NUM_CLASSES = 10

LAYERS = (
    Layer("layer.0", "conv", (1, 28, 28), (16, 24, 24), KERNEL),  # -> ReLU
    Layer("layer.2", "conv", (16, 24, 24), (32, 20, 20), KERNEL),  # -> ReLU -> max-pool 2
    Layer("layer.5", "conv", (32, 10, 10), (64, 6, 6), KERNEL),  # -> ReLU -> max-pool 2
    Layer("fc_layer.0", "linear", (64 * 3 * 3,), (100,)),  # flatten (C, H, W) -> ReLU
    Layer("fc_layer.2", "linear", (100,), (NUM_CLASSES,)),  # logits
)
FLATTEN_SHAPE = (64, 3, 3)  # (C, H, W) after the second pool: fc_layer.0's inputs

CANONICAL_SHAPES = {}
for _layer in LAYERS:
    CANONICAL_SHAPES[f"{_layer.key}.weight"] = _layer.weight_shape
    CANONICAL_SHAPES[f"{_layer.key}.bias"] = (_layer.out_shape[0],)
del _layer
NUM_PARAMETERS = sum(
    a * b * c * d for a, b, c, d in
    ((*shape, 1, 1, 1)[:4] for shape in CANONICAL_SHAPES.values()))  # 123,222
FORWARD_MULTIPLY_ADDS = sum(layer.multiply_adds for layer in LAYERS)

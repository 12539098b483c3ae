"""The variants timed side by side, each built on an engine (`torch_impl.backend`,
`flax_impl.backend`): its state, its batch placement, its train step and its logits. A variant
other than the engine's own only swaps a piece of the engine's state (the model's memory
format, a compiled model, the Flax module); nothing here re-implements a step."""

import dataclasses

import numpy as np
import torch

from benchmarks.timing import Candidate
from flax_impl import backend as flax_backend
from flax_impl.model import CNN as FlaxCNN
from mnist_common.architecture import INPUT_SHAPE, NUM_CLASSES
from mnist_common.config import Config
from torch_impl import backend as torch_backend

VARIANTS = {
    "torch-eager": "torch_impl.backend's state, train_step and logits, eager, NCHW",
    "torch-channels-last": "the same with model and input in torch.channels_last memory format",
    "torch-compile": "the same with torch.compile(model, dynamic=False) (default mode)",
    "flax-jit": "flax_impl.backend's state, train_step and logits under jax.jit, NHWC: the "
                "model flax_impl.backend.create_model(placement) ships for this device",
    "flax-xla-conv": "the same with flax_impl.model.CNN() at its defaults: stock "
                     "lax.conv_general_dilated (and pooling); run only when that differs",
}
BASELINE = "torch-eager"  # every ratio is variant / torch eager NCHW
DEFAULT_VARIANT = {"torch": "torch-eager", "flax": "flax-jit"}  # what the training CLIs run
BACKENDS = {"torch": torch_backend, "flax": flax_backend}
TUTORIAL = Config()  # batch 256, Adam 2e-4, seed 0, 10 epochs


@dataclasses.dataclass
class Variant:
    """An engine's train state on one device, and how a placed batch is adapted for it."""

    name: str
    framework: str
    state: object  # the engine's TrainState; train steps replace it
    placement: object  # the engine's Placement (one device)
    sync: object  # waits for a result of this framework on this device
    adapt: object = None  # placed batch -> the batch this variant feeds (None: unchanged)

    @property
    def backend(self):
        return BACKENDS[self.framework]


def synthetic_batch(batch_size, seed=0):
    """Images in [0, 1) and labels, as the loaders give them: NCHW float32 / int64 tensors."""
    rng = np.random.default_rng([seed, batch_size])
    images = rng.random((batch_size, *INPUT_SHAPE), dtype=np.float32)  # (B, 1, 28, 28)
    labels = rng.integers(0, NUM_CLASSES, batch_size)
    return torch.from_numpy(images), torch.from_numpy(labels)


def flax_uses_custom_conv(placement):
    """True when the engine's model does not use stock lax.conv_general_dilated here."""
    return flax_backend.create_model(placement).conv_general_dilated is not None


def _channels_last(batch):
    images, labels = batch
    return images.contiguous(memory_format=torch.channels_last), labels


def torch_variant(name, device, config=TUTORIAL):
    """torch eager NCHW, eager channels_last, or torch.compile over the engine's state."""
    state = torch_backend.create_train_state(config, device.torch)
    adapt = None
    if name == "torch-channels-last":
        state.model.to(memory_format=torch.channels_last)  # in place: the optimizer still fits
        adapt = _channels_last
    elif name == "torch-compile":
        # A fixed shape per batch size, as the tutorial uses: one static graph each.
        state = state._replace(model=torch.compile(state.model, dynamic=False))
    return Variant(name, "torch", state, device.torch, device.torch_sync, adapt)


def flax_variant(name, device, config=TUTORIAL):
    """The engine's Flax state, or the same params with the stock module's apply."""
    state = flax_backend.create_train_state(config, device.flax)
    if name == "flax-xla-conv":
        # Same params, same optax transform; only the module (its convolution) differs.
        state = state.replace(apply_fn=FlaxCNN().apply)
    return Variant(name, "flax", state, device.flax, device.jax_sync)


def build_variants(device, names):
    """The variants this device can run: {name: Variant} and {name: reason} for the rest."""
    built, skipped = {}, {}
    for name in names:
        framework = name.split("-")[0]
        if framework == "torch" and device.torch is None:
            skipped[name] = "PyTorch does not see this device"
        elif framework == "flax" and device.flax is None:
            skipped[name] = "JAX does not see this device"
        elif name == "flax-xla-conv" and not flax_uses_custom_conv(device.flax):
            skipped[name] = "the engine's Flax model already uses lax.conv_general_dilated"
        else:
            build = torch_variant if framework == "torch" else flax_variant
            built[name] = build(name, device)
    return built, skipped


def placed_batch(variant, batch_size):
    """A synthetic batch placed by the engine, as the training loop places real ones."""
    batch = variant.backend.place_batch(variant.placement, *synthetic_batch(batch_size))
    return variant.adapt(batch) if variant.adapt else batch


def train_candidate(variant, batch_size):
    """One engine train step per call, the loss read back to the host as the loop does."""
    batch = placed_batch(variant, batch_size)

    def call():
        variant.state, metrics = variant.backend.train_step(variant.state, batch)
        return float(metrics["loss"])

    return Candidate(variant.name, call, variant.sync)


def inference_candidate(variant, batch_size):
    """The engine's logits (N, 10) of one batch per call, back on the host."""
    batch = placed_batch(variant, batch_size)
    return Candidate(variant.name, lambda: variant.backend.logits(variant.state, batch),
                     variant.sync)

"""The variants timed side by side, each built on an engine (`torch_impl.backend`,
`flax_impl.backend`): its state, its batch placement, its train step and its logits. A variant
other than the engine's own only swaps a piece of the engine's state (the model's memory
format, a compiled model, the Flax module); nothing here re-implements a step."""

import dataclasses

import jax
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
    "torch-channels-last": "the same with model and input in torch.channels_last memory format "
                           "(the engine's own format on the CPU)",
    "torch-compile": "the same with torch.compile(model, dynamic=False) (default mode)",
    "flax-jit": "flax_impl.backend's state, train_step and logits under jax.jit, NHWC: the "
                "model flax_impl.backend.create_model(placement) ships for this device",
    "flax-xla-defaults": "the same step under a plain jax.jit (XLA's default compiler options) "
                         "with flax_impl.model.CNN() at its defaults (Flax's max-pool): what "
                         "the engine changes on the CPU; run only where it changes something",
}
BASELINE = "torch-eager"  # every ratio is variant / torch eager NCHW
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
    train_step: object = None  # (state, batch) -> (state, metrics); None: the engine's
    logits: object = None  # (state, batch) -> NumPy logits; None: the engine's

    @property
    def backend(self):
        return BACKENDS[self.framework]


def default_variant(framework, placement):
    """The variant the training CLIs run on `placement`: torch's engine trains channels_last on
    the CPU (`torch_impl.backend.memory_format`)."""
    if framework == "flax":
        return "flax-jit"
    channels_last = torch_backend.memory_format(placement) == "channels_last"
    return "torch-channels-last" if channels_last else "torch-eager"


def synthetic_batch(batch_size, seed=0):
    """Images in [0, 1) and labels, as the loaders give them: NCHW float32 / int64 NumPy."""
    rng = np.random.default_rng([seed, batch_size])
    images = rng.random((batch_size, *INPUT_SHAPE), dtype=np.float32)  # (B, 1, 28, 28)
    labels = rng.integers(0, NUM_CLASSES, batch_size)
    return images, labels


def flax_engine_differs(placement):
    """True where the engine compiles or builds its model otherwise than a plain jax.jit of
    the stock module would (the CPU: `flax_impl.xla_cpu`)."""
    return placement.device.platform == "cpu" or flax_backend.create_model(placement) != FlaxCNN()


def _channels_last(batch):
    images, labels = batch
    return images.contiguous(memory_format=torch.channels_last), labels


def torch_variant(name, device, config=TUTORIAL):
    """torch eager NCHW, eager channels_last, or torch.compile over the engine's state."""
    state = torch_backend.create_train_state(config, device.torch)
    adapt = None
    # The engine's own format is channels_last on the CPU: each variant sets its own, in place
    # (the optimizer still fits).
    channels_last = name == "torch-channels-last"
    state.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if channels_last:
        adapt = _channels_last
    elif name == "torch-compile":
        # A fixed shape per batch size, as the tutorial uses: one static graph each.
        state = state._replace(model=torch.compile(state.model, dynamic=False))
    return Variant(name, "torch", state, device.torch, device.torch_sync, adapt)


def flax_variant(name, device, config=TUTORIAL):
    """The engine's Flax state and step, or the same step and params under a plain jax.jit
    with the stock module."""
    state = flax_backend.create_train_state(config, device.flax)
    if name != "flax-xla-defaults":
        return Variant(name, "flax", state, device.flax, device.jax_sync)
    # Same params, same optax transform, the same step function; only the module and the
    # compiler options differ.
    stock = FlaxCNN()
    state = state.replace(apply_fn=stock.apply)
    forward = jax.jit(stock.apply)
    return Variant(name, "flax", state, device.flax, device.jax_sync,
                   train_step=jax.jit(flax_backend._step),
                   logits=lambda s, batch: np.asarray(forward({"params": s.params}, batch[0])))


def build_variants(device, names):
    """The variants this device can run: {name: Variant} and {name: reason} for the rest."""
    built, skipped = {}, {}
    for name in names:
        framework = name.split("-")[0]
        if framework == "torch" and device.torch is None:
            skipped[name] = "PyTorch does not see this device"
        elif framework == "flax" and device.flax is None:
            skipped[name] = "JAX does not see this device"
        elif name == "flax-xla-defaults" and not flax_engine_differs(device.flax):
            skipped[name] = "the engine already runs a plain jax.jit of the stock module here"
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
    step = variant.train_step or variant.backend.train_step

    def call():
        variant.state, metrics = step(variant.state, batch)
        return float(metrics["loss"])

    return Candidate(variant.name, call, variant.sync)


def inference_candidate(variant, batch_size):
    """The engine's logits (N, 10) of one batch per call, back on the host."""
    batch = placed_batch(variant, batch_size)
    logits = variant.logits or variant.backend.logits
    return Candidate(variant.name, lambda: logits(variant.state, batch), variant.sync)

"""The isolated measurements on the engines: the variants side by side (each swaps one piece of
the engine's state: memory format, compiled model, Flax module and compiler options), FLOPs,
peak GEMM, train step and logits per batch size, each layer alone. A measurement over several
batch sizes or layers yields (key, figures) as each is done, so a stopped run keeps them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import linen

from benchmarks import TUTORIAL, harness
from benchmarks.harness import Candidate, memory, rates, status, time_interleaved
from flax_impl import backend as flax_backend
from flax_impl import xla_cpu
from flax_impl.model import CNN as FlaxCNN
from mnist_common import architecture
from mnist_common.architecture import INPUT_SHAPE, NUM_CLASSES
from torch_impl import backend as torch_backend


def default_variant(framework, placement):
    """The variant the training CLIs run on `placement` (torch: channels_last on the CPU)."""
    if framework == "flax":
        return "flax-jit"
    channels_last = torch_backend.memory_format(placement) == "channels_last"
    return "torch-channels-last" if channels_last else "torch-eager"


BACKENDS = {"torch": torch_backend, "flax": flax_backend}
GEMM_SIZE = {"cpu": 2048, "gpu": 8192}
CONVENTION = ("forward FLOPs = 2 x multiply-adds of each conv and linear layer (bias, ReLU, "
              "max-pool, softmax and loss not counted); training FLOPs = 3 x forward "
              "(backward = input gradient + weight gradient, each about one forward)")
LAYER_NOTE = "layer.0 gets no input gradient (as in training); the others do"


@dataclasses.dataclass
class Variant:
    """An engine's train state on one device, and how a placed batch is adapted for it."""

    name: str
    backend: object  # torch_impl.backend or flax_impl.backend
    state: object  # the engine's TrainState; train steps replace it
    placement: object  # the engine's Placement (one device)
    sync: object  # waits for a result of this framework on this device
    adapt: object = None  # placed batch -> the batch this variant feeds (None: unchanged)
    train_step: object = None  # (state, batch) -> (state, metrics); None: the engine's
    logits: object = None  # (state, batch) -> NumPy logits; None: the engine's


def flax_engine_differs(placement):
    """Whether the Flax engine differs from a plain jax.jit of the stock module (the CPU)."""
    return placement.device.platform == "cpu" or flax_backend.create_model(placement) != FlaxCNN()


def torch_variant(name, device, config=TUTORIAL):
    """torch eager NCHW, eager channels_last, or torch.compile over the engine's state."""
    state = torch_backend.create_train_state(config, device.torch)
    layout = torch.channels_last if name == "torch-channels-last" else torch.contiguous_format
    # In place (the optimizer still fits); eager and compile stay NCHW whatever the engine uses.
    state.model.to(memory_format=layout)
    if name == "torch-compile":  # a fixed shape per batch size, as the tutorial's: one graph each
        state = state._replace(model=torch.compile(state.model, dynamic=False))
    return Variant(name, torch_backend, state, device.torch, device.torch_sync,
                   adapt=lambda batch: (batch[0].contiguous(memory_format=layout), batch[1]))


def plain_train_step(state, batch):
    """The engine's train step as a plain function, for a `jax.jit` at XLA's default options
    (`tests/test_benchmark.py` checks it against `flax_impl.backend.train_step`)."""
    images, labels = batch

    def loss_fn(params):
        return flax_backend.cross_entropy(state.apply_fn({"params": params}, images), labels)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}


def flax_variant(name, device, config=TUTORIAL):
    """The engine's Flax state and step, or the same under a plain jax.jit of the stock CNN."""
    state = flax_backend.create_train_state(config, device.flax)
    if name != "flax-xla-defaults":
        return Variant(name, flax_backend, state, device.flax, jax.block_until_ready)
    # Same params and optax transform; only the module and the compiler options differ.
    stock = FlaxCNN()
    state = state.replace(apply_fn=stock.apply)
    forward = jax.jit(stock.apply)
    return Variant(name, flax_backend, state, device.flax, jax.block_until_ready,
                   train_step=jax.jit(plain_train_step),
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


def placed_batch(variant, batch_size, seed=0):
    """Random MNIST-like data (uint8 (B, 28, 28), int64 labels) cut on the device by the engine."""
    rng = np.random.default_rng([seed, batch_size])
    images = rng.integers(0, 256, (batch_size, *INPUT_SHAPE[1:]), dtype=np.uint8)
    split = variant.backend.place_split(variant.placement, images,
                                        rng.integers(0, NUM_CLASSES, batch_size))
    batch = variant.backend.gather_batch(split, np.arange(batch_size))
    return variant.adapt(batch) if variant.adapt else batch


def step_candidate(variant, batch_size, train):
    """Per call, one train step with the loss read back as the loop does, or (N, 10) logits."""
    batch = placed_batch(variant, batch_size)
    step = variant.train_step or variant.backend.train_step
    logits = variant.logits or variant.backend.logits

    def train_call():
        variant.state, metrics = step(variant.state, batch)
        return float(metrics["loss"])

    call = train_call if train else lambda: logits(variant.state, batch)
    return Candidate(variant.name, call, variant.sync)


def flop_counts():
    """FLOPs per image, forward and training, and per layer, from `architecture.LAYERS`."""
    forward = 2 * architecture.FORWARD_MULTIPLY_ADDS
    return {"convention": CONVENTION, "forward_per_image": forward, "train_per_image": 3 * forward,
            "layers": [{"layer": layer.key, "kind": layer.kind, "input_shape": list(layer.in_shape),
                        "output_shape": list(layer.out_shape),
                        "macs_per_image": layer.multiply_adds,
                        "forward_flops_per_image": 2 * layer.multiply_adds}
                       for layer in architecture.LAYERS]}


def measure_gemm(device, settings):
    """float32 GEMM rate with torch (the peak every % refers to) and with jnp, n³ each."""
    n = GEMM_SIZE[device.kind]
    rng = np.random.default_rng(0)
    a_np, b_np = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    candidates = []
    if device.torch is not None:
        a, b = (torch.from_numpy(m).to(device.torch.device) for m in (a_np, b_np))
        c = torch.empty_like(a)
        candidates.append(Candidate("torch", lambda: torch.mm(a, b, out=c), device.torch_sync))
    if device.flax is not None:
        a_j, b_j = jax.device_put((a_np, b_np), device.flax.device)
        matmul = jax.jit(jnp.matmul)
        candidates.append(Candidate("jax", lambda: matmul(a_j, b_j), jax.block_until_ready))
    out = {"size": n, "flops_per_call": 2 * n**3}
    for name, result in time_interleaved(candidates, settings).items():
        if "error" not in result:
            result["gflop_per_second"] = rates(result["seconds_per_call"], 2 * n**3 / 1e9)
        out[name] = result
    return out


def per_batch(device, variants, settings, kind, flops, peak):
    """Yields (batch, {variant: timing with rates}) of train steps or logits, interleaved."""
    train = kind == "train"
    batch_sizes = settings.train_batch_sizes if train else settings.inference_batch_sizes
    flops_per_image = flops["train_per_image" if train else "forward_per_image"]
    for batch_size in batch_sizes:
        status(f"[{device.kind}] {'training' if train else 'inference'}, batch {batch_size}: "
               f"{', '.join(variants)}")
        if device.kind == "gpu" and device.torch is not None:  # peaks of this batch size alone
            torch.cuda.reset_peak_memory_stats(device.torch.device)
        timed = time_interleaved([step_candidate(v, batch_size, train) for v in variants.values()],
                                 settings)
        snapshot = memory(device)
        for result in (r for r in timed.values() if "error" not in r):
            per_call = result["seconds_per_call"]
            result["images_per_second"] = rates(per_call, batch_size)
            result["gflop_per_second"] = rates(per_call, batch_size * flops_per_image / 1e9)
            result["percent_of_peak"] = (100 * result["gflop_per_second"]["median"] / peak
                                         if peak else None)
            result["memory"] = snapshot
        yield batch_size, timed  # saved before it is printed
        status(f"[{device.kind}]   " + ", ".join(
            f"{name} " + ("failed" if "error" in result
                          else f"{result['images_per_second']['median']:.0f} images/s")
            for name, result in timed.items()))


def milliseconds(result):
    """The median, min and max of one timing, ms per call."""
    return {k: 1e3 * result["seconds_per_call"][k] for k in ("median", "min", "max")}


def latency(inference):
    """Single-image latency (ms) per variant, from the batch-1 inference windows."""
    return {name: milliseconds(result) for name, result in inference.get(1, {}).items()
            if "error" not in result}


def torch_layer_candidates(row, device, batch_size, module):
    """torch forward and forward+backward of one layer (NCHW input)."""
    x = torch.rand((batch_size, *row["input_shape"]), device=device.torch.device)
    grad = torch.rand((batch_size, *row["output_shape"]), device=device.torch.device)
    x_grad = x.clone().requires_grad_(row["layer"] != "layer.0")  # the image needs no gradient

    @torch.no_grad()
    def forward():
        return module(x)

    def forward_backward():
        module.zero_grad(set_to_none=True)
        module(x_grad).backward(grad)

    return (Candidate("torch", forward, device.torch_sync),
            Candidate("torch", forward_backward, device.torch_sync))


def flax_layer_candidates(row, device, batch_size, name, jit):
    """Flax forward and forward+backward (vjp) of one layer (NHWC input), jitted by `jit`."""
    kernel = next(layer for layer in architecture.LAYERS if layer.key == row["layer"]).kernel
    module = (linen.Conv(row["output_shape"][0], (kernel, kernel), padding="VALID")
              if row["kind"] == "conv" else linen.Dense(row["output_shape"][0]))
    x_shape, y_shape = ((batch_size, *shape[1:], shape[0]) if len(shape) == 3  # (C, H, W): NHWC
                        else (batch_size, *shape)
                        for shape in (row["input_shape"], row["output_shape"]))
    key_x, key_g, key_p = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.device_put(jax.random.uniform(key_x, x_shape), device.flax.device)
    grad = jax.device_put(jax.random.uniform(key_g, y_shape), device.flax.device)
    params = jax.device_put(module.init(key_p, x[:1]), device.flax.device)
    needs_input_grad = row["layer"] != "layer.0"
    forward = jit(module.apply)

    @jit
    def forward_backward(params, x, grad):
        y, vjp = (jax.vjp(module.apply, params, x) if needs_input_grad
                  else jax.vjp(lambda p: module.apply(p, x), params))
        return y, vjp(grad)  # y too: a linear layer's vjp does not need it, XLA would drop it

    return (Candidate(name, lambda: forward(params, x), jax.block_until_ready),
            Candidate(name, lambda: forward_backward(params, x, grad), jax.block_until_ready))


def layer_candidates(row, device, batch_size, torch_modules):
    """Forward candidates, then forward+backward ones, of one layer, named impl/pass."""
    pairs = []
    if device.torch is not None:
        pairs.append(torch_layer_candidates(row, device, batch_size, torch_modules[row["layer"]]))
    if device.flax is not None:
        impls = {"flax": xla_cpu.jit}  # as the engine jits its train step
        if row["kind"] == "conv" and flax_engine_differs(device.flax):
            impls["xla-default"] = jax.jit  # XLA's default options beside the engine's
        pairs += [flax_layer_candidates(row, device, batch_size, name, jit)
                  for name, jit in impls.items()]
    return ([f._replace(name=f"{f.name}/forward") for f, _ in pairs]
            + [b._replace(name=f"{b.name}/forward_backward") for _, b in pairs])


def layer_entry(row, timed):
    """One row of the results: ms per pass and implementation (or its error), others' load."""
    entry = {**row, "forward_ms": {}, "forward_backward_ms": {},
             "other_load": max(harness.windows_load(timed.values()), default=None)}
    for name, result in timed.items():
        impl, pass_ = name.split("/")
        entry[f"{pass_}_ms"][impl] = result if "error" in result else milliseconds(result)
    return entry


def measure_layers(device, settings, flops):
    """Yields the batch size, the note, then the rows so far after each layer."""
    batch_size = settings.layer_batch_size
    torch_modules = ({} if device.torch is None else
                     dict(torch_backend.create_model(device.torch).named_modules()))
    yield "batch_size", batch_size
    yield "note", LAYER_NOTE
    rows = []
    for row in flops["layers"]:
        status(f"[{device.kind}] layer {row['layer']} ({row['kind']}), batch {batch_size}")
        candidates = layer_candidates(row, device, batch_size, torch_modules)
        rows.append(layer_entry(row, time_interleaved(candidates, settings)))
        yield "rows", rows

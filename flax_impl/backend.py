"""The Flax engine: model, train step, evaluation and the state's canonical arrays.

The training CLI, the evaluation CLI, the benchmark and the parity tests all run these
functions; `torch_impl/backend.py` defines the same names with the same parameters
(`mnist_common/backend.py` is the interface). Layout: NHWC; the train state is Flax's
`TrainState` (params, Optax Adam state, step), updated by pure jitted functions.
"""

import functools
import os
import platform

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from flax_impl import convert, distributed, xla_cpu
from flax_impl.model import CNN
from mnist_common.errors import UsageError, first_line
from mnist_common.fileio import say
from mnist_common.loaders import PIXELS
from mnist_common.placement import Placement

FRAMEWORK = "flax"


class TrainState(train_state.TrainState):
    placement: Placement = struct.field(pytree_node=False, default=None)


def versions():
    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


def _select_device(name):
    """`auto` -> the first GPU when present, else CPU; an absent device asked for is an error."""
    try:  # JAX_PLATFORMS naming a platform that is not there fails JAX's first device query
        jax.devices()
    except (RuntimeError, AssertionError) as err:
        platforms = os.environ.get("JAX_PLATFORMS", "")
        reason = first_line(err) if isinstance(err, RuntimeError) else "it is not available"
        raise UsageError(f"JAX_PLATFORMS={platforms}: JAX cannot start it ({reason}); unset "
                         f"JAX_PLATFORMS or name a platform this machine has") from None
    if name == "auto":
        return jax.devices()[0]
    if name in ("cuda", "gpu"):
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:
            raise UsageError(f"--device {name}: no GPU is visible to JAX "
                             f"(backend: {jax.default_backend()})") from None
    if name == "cpu":
        return jax.devices("cpu")[0]
    raise UsageError(f"--device {name}: unknown device (choose auto, cpu, cuda or gpu)")


def _set_precision(precision, device):
    """highest: true float32 convolutions and matmuls; tf32: both may use TF32 (GPU only).

    XLA's GPU default is TF32 for both; the CPU computes float32 either way and is left alone.
    """
    if device.platform != "cpu":
        jax.config.update("jax_default_matmul_precision",
                          "highest" if precision == "highest" else "tensorfloat32")


def _compute_in_float32():
    """The engine computes in float32 whatever the environment says: JAX_ENABLE_X64=1 (or
    `jax_enable_x64`) changes the weights' bits after a few steps (measured), so it is set off
    here, and said so."""
    if jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", False)
        say("flax: JAX_ENABLE_X64 ignored: the engine computes in float32")


def select_placement(device, precision="highest"):
    _compute_in_float32()
    distributed.init()  # joins the run when JAX_* asked for several processes: before devices
    first = _select_device(device)
    _set_precision(precision, first)
    return Placement(first, distributed.group_over(first))


def describe_placement(placement):
    """`cpu (x86_64)` or the GPU's name; with the device count on a mesh."""
    device = placement.device
    if device.platform == "cpu":
        text = f"cpu ({platform.machine()})"
    else:
        text = f"{device.platform} ({device.device_kind})"
    return text if placement.group is None else distributed.describe(placement.group, text)


def memory_format(placement):
    """NHWC, Flax's layout, on every platform."""
    return "NHWC"


# Forward-only graphs (evaluation, logits) use the stock module on every platform: the CPU pool
# of `create_model` pays off in the gradient, and its forward is bit-identical to the stock one.
INFERENCE_MODEL = CNN()
_CPU_MODEL = CNN(max_pool=xla_cpu.max_pool)


def create_model(placement):
    """The CNN; on the CPU with `xla_cpu.max_pool` (the same numbers; its gradient is faster
    there than XLA's `select_and_scatter`); other platforms get the stock module.

    One instance per kind: a Linen module holds no state, and a train state's `apply_fn` is a
    static field that `jit` keys its cache on, so a new module would compile the train step
    again for every new state in a process (the seed study, the benchmark, the tests)."""
    return _CPU_MODEL if placement.device.platform == "cpu" else INFERENCE_MODEL


@functools.cache
def _adam(lr):
    """Optax Adam with torch.optim.Adam's defaults: betas (0.9, 0.999), eps 1e-8 (outside the
    sqrt). One per learning rate, for the reason of `create_model`: `tx` is static too."""
    return optax.adam(learning_rate=lr, b1=0.9, b2=0.999, eps=1e-8)


@jax.jit
def _initial_params(init_rng):
    """The seeded initial parameters as one compiled program: Flax's `init` run eagerly compiles
    its ~60 operations one by one (7.2 s in a new process on a 2-core EPYC, against 4.7 s), to
    the same values bit for bit (jax.random's draws are jitted functions either way). The pool
    has no parameters, so the stock module serves every platform."""
    return INFERENCE_MODEL.init(init_rng, jnp.ones((1, 28, 28, 1), jnp.float32))["params"]


def create_train_state(config, placement):
    # The second key of the seed's split: what the weights of every seed have been drawn from.
    init_rng = jax.random.split(jax.random.PRNGKey(config.seed))[1]
    model = create_model(placement)
    params = _initial_params(init_rng)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=_adam(config.lr),
                              placement=placement)
    return _put(placement, state)


def cross_entropy(logits, labels, mask=None):
    """Mean cross-entropy of integer labels; with a 0/1 `mask`, the mean over the examples it
    keeps (the rest pad a batch for the mesh)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if mask is None:
        return losses.mean()
    return (losses * mask).sum() / mask.sum()


def place_batch(placement, images, labels):
    """A host batch (NumPy, NCHW) -> (NHWC float32, int32) arrays on the device; on a mesh,
    split along it. (One channel: NCHW -> NHWC is a reshape, no copy.)"""
    x = np.asarray(images).reshape(len(labels), 28, 28, 1)  # (B, 28, 28, 1)
    y = np.asarray(labels).astype(np.int32)
    if placement.group is not None:
        return distributed.place_batch(placement.group, x, y)
    return jax.device_put((x, y), placement.device)


def place_split(placement, images, labels):
    """A whole split (uint8 images (N, 28, 28), labels) and the pixel table held on the device,
    for `gather_batch`; None on a mesh, where batches are sharded from the host."""
    if placement.group is not None:
        return None
    return jax.device_put((images, labels.astype(np.int32), PIXELS), placement.device)


@jax.jit
def _gather(images, labels, pixels, index):
    return pixels[images[index]][..., None], labels[index]  # (B, 28, 28, 1)


def gather_batch(split, indices):
    """The batch of `indices` cut from a placed split on its device; pixels from the table."""
    return _gather(*split, indices)


def steps_per_dispatch(placement):
    """Train steps per call of `train_steps` by default: 1 on the CPU (the scan measured no
    faster there), else None (an epoch in one `lax.scan`)."""
    return 1 if placement.device.platform == "cpu" else None


# Examples per forward/backward pass (about 1.9 GB of XLA temporaries): XLA:CPU's convolution
# kernels allocate memory outside XLA's accounting, and a batch of 40,000 in one pass aborted
# with std::bad_alloc on a 24 GiB machine. A larger batch takes the same step chunk by chunk.
BIG_BATCH = 8192


def _sum_loss(apply_fn, params, images, labels, weights):
    """Σ weights · cross-entropy over one chunk."""
    logits = apply_fn({"params": params}, images)  # (chunk, 10)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, labels) * weights).sum()


def _chunked_loss_and_grads(apply_fn, params, images, labels, mask=None):
    """(mean loss, its gradient) of a batch larger than `BIG_BATCH`, chunk by chunk: the same
    full-batch step in another order of float32 sums; `mask` as `cross_entropy`'s."""
    count = images.shape[0]
    weights = jnp.ones((count,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    grad_fn = jax.value_and_grad(_sum_loss, argnums=1)
    loss_sum, grad_sum = 0.0, None
    # Unrolled, not a lax.scan: XLA:CPU ran the convolutions inside a scan's loop ~10x slower.
    for start in range(0, count, BIG_BATCH):
        part = slice(start, min(start + BIG_BATCH, count))
        loss, grads = grad_fn(apply_fn, params, images[part], labels[part], weights[part])
        loss_sum = loss_sum + loss
        grad_sum = grads if grad_sum is None else jax.tree_util.tree_map(jnp.add, grad_sum,
                                                                          grads)
    total = weights.sum()
    return loss_sum / total, jax.tree_util.tree_map(lambda g: g / total, grad_sum)


def _step(state, batch):
    """The one step function, plain: `train_step` jits it, `train_steps` scans it (compiler
    options cannot sit on a nested jit), the benchmark jits it with XLA's defaults.

    `batch` is (images, labels), or (images, labels, mask) for a batch padded to a multiple of
    the mesh's size. On a mesh (batch sharded, state replicated) XLA all-reduces the gradient.
    """
    images, labels, *mask = batch

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, images)  # (N, 10)
        return cross_entropy(logits, labels, *mask)

    if images.shape[0] > BIG_BATCH:
        loss, grads = _chunked_loss_and_grads(state.apply_fn, state.params, images, labels,
                                              *mask)
    else:
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, {"loss": loss}


def _scan_steps(state, images, labels):
    """Steps over stacked batches (K, B, ...) as one `lax.scan`: one dispatch, one program."""
    def body(carry, batch):
        carry, metrics = _step(carry, batch)
        return carry, metrics["loss"]
    return jax.lax.scan(body, state, (images, labels))


_step_jit = xla_cpu.jit(_step)
_scan_jit = xla_cpu.jit(_scan_steps, donate_argnums=0)  # the state is updated in place


def train_step(state, batch):
    """One Adam step on one batch, gradient and update in one jit region; the loss stays on
    the device."""
    return _step_jit(state, batch)


def _scans(state, batches):
    """True where `train_steps` runs a scan: off the CPU, on batches of one device and shape.

    On XLA:CPU the scanned step measured several times slower than the jitted step called
    from Python, so the CPU dispatches one step at a time (and stays bit-identical to
    `train_step`; a scanned step differs from it in the last bit of some Adam updates, while
    scans of any length agree with each other bit for bit, so resume stays exact).
    """
    return state.placement.device.platform != "cpu" and all(
        len(b) == 2 and b[0].shape == batches[0][0].shape for b in batches)


def train_steps(state, batches):
    """Consecutive train steps; the losses come back to the host once, at the end.

    On a GPU the batches (of one shape, no mesh padding) run as one jitted `lax.scan`.
    """
    if _scans(state, batches):
        images = jnp.stack([b[0] for b in batches])  # (K, B, 28, 28, 1)
        labels = jnp.stack([b[1] for b in batches])
        state, losses = _scan_jit(state, images, labels)
        return state, np.asarray(_host(losses))
    losses = []
    for batch in batches:
        state, metrics = train_step(state, batch)
        losses.append(metrics["loss"])
    return state, np.asarray(_host(losses))


@jax.jit  # forward only: XLA's default options are the faster ones here (see xla_cpu)
def _eval_step(params, batch):
    """Summed loss, correct count and example count of one batch (padding excluded)."""
    images, labels, *mask = batch
    keep = mask[0] if mask else jnp.ones(labels.shape, jnp.float32)
    out = INFERENCE_MODEL.apply({"params": params}, images)
    losses = optax.softmax_cross_entropy_with_integer_labels(out, labels)
    loss_sum = (losses * keep).sum() if mask else losses.sum()
    correct = ((out.argmax(axis=1) == labels) * keep).sum()
    return {"loss": loss_sum, "correct": correct, "examples": keep.sum()}


def evaluate(state, batches):
    """Exact mean loss and accuracy over all batches (one host read at the end)."""
    sums = [_eval_step(state.params, batch) for batch in batches]  # dispatched, not waited for
    if state.placement.group is not None:
        sums = distributed.all_sum(state.placement.group, sums)
    loss_sum, correct, examples = 0.0, 0, 0
    for out in _host(sums):
        loss_sum += float(out["loss"])
        correct += int(round(float(out["correct"])))
        examples += int(round(float(out["examples"])))
    return {"loss": loss_sum / examples, "accuracy": correct / examples,
            "correct": correct, "examples": examples}


@jax.jit
def _logits(params, images):
    return INFERENCE_MODEL.apply({"params": params}, images)


def logits(state, batch):
    return np.asarray(_logits(state.params, batch[0]))


def state_to_arrays(state):
    """Canonical weights and Adam state (torch layouts) as NumPy arrays."""
    params = convert.params_to_canonical(_host(state.params))
    adam = state.opt_state[0]  # optax.adam = chain(scale_by_adam, scale_by_learning_rate)
    optimizer = {}
    mu = convert.params_to_canonical(_host(adam.mu))
    nu = convert.params_to_canonical(_host(adam.nu))
    for key in mu:
        optimizer[f"exp_avg.{key}"] = mu[key]
        optimizer[f"exp_avg_sq.{key}"] = nu[key]
    optimizer["step"] = np.asarray([float(_host(adam.count))], dtype=np.float32)
    return params, optimizer


def state_from_arrays(state, params, optimizer):
    """The state holding canonical weights and (if any) Adam state, on `state`'s placement.
    Like `train_step`, it consumes `state`: it builds new arrays in its place."""
    flax_params = convert.canonical_to_params(params)
    if optimizer:
        adam = state.opt_state[0]
        mu = convert.canonical_to_params({k: optimizer[f"exp_avg.{k}"] for k in params})
        nu = convert.canonical_to_params({k: optimizer[f"exp_avg_sq.{k}"] for k in params})
        count = int(optimizer["step"][0])
        adam = adam._replace(count=np.asarray(count, dtype=np.int32), mu=mu, nu=nu)
        opt_state = (adam,) + tuple(state.opt_state[1:])
        step = count
    else:
        opt_state = state.tx.init(flax_params)
        step = 0
    new = state.replace(step=np.asarray(step, dtype=np.int32), params=flax_params,
                        opt_state=opt_state)
    return _put(state.placement, new)


def _put(placement, tree):
    """Values -> the placement: its device, or replicated on its mesh."""
    if placement.group is None:
        return jax.device_put(tree, placement.device)
    return distributed.replicate(placement.group, tree)


def _host(tree):
    """One-device or replicated arrays -> NumPy; each process of a mesh reads its own copy."""
    def get(a):
        return np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else np.asarray(a)
    return jax.tree_util.tree_map(get, tree)

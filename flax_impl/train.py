"""Train the tutorial's CNN with Flax Linen and Optax: `python -m flax_impl.train --help`."""

import os
import platform

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flax_impl import convert, cpu_conv
from flax_impl.model import CNN
from mnist_common.config import parse_config
from mnist_common.errors import UsageError, run_cli
from mnist_common.loaders import to_numpy_batch
from mnist_common.training import Hooks, fit


class TrainState(train_state.TrainState):
    pass


def select_device(name):
    """`auto` -> the first GPU when present, else CPU; an absent device asked for is an error."""
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


def describe_device(device):
    """`cpu (x86_64)` or the GPU's name; for a mesh, its first device and the device count."""
    if isinstance(device, Mesh):
        hosts = f" on {jax.process_count()} processes" if jax.process_count() > 1 else ""
        return (f"{describe_device(device.devices.flat[0])} x {device.size} devices{hosts} "
                f"(jax.sharding, 1-D data mesh)")
    if device.platform == "cpu":
        return f"cpu ({platform.machine()})"
    return f"{device.platform} ({device.device_kind})"


# --- several devices: a 1-D mesh, the batch sharded, the train state replicated ---------------

DATA_AXIS = "data"
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_distributed():
    """`jax.distributed.initialize` from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID when they are set (several hosts); otherwise nothing (one process)."""
    present = [name for name in _DISTRIBUTED_ENV if os.environ.get(name)]
    if not present:
        return
    if len(present) != len(_DISTRIBUTED_ENV):
        missing = ", ".join(n for n in _DISTRIBUTED_ENV if n not in present)
        raise UsageError(f"{', '.join(present)} set but {missing} not: set all three to train "
                         f"on several processes")
    try:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
        process_id = int(os.environ["JAX_PROCESS_ID"])
    except ValueError:
        raise UsageError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be whole numbers") from None
    if not 0 <= process_id < num_processes:
        raise UsageError(f"JAX_PROCESS_ID {process_id} is not in [0, {num_processes})")
    jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], num_processes, process_id)


def select_placement(name):
    """Where to train: one device, or a 1-D `data` mesh over every device of that platform
    (every process's, after `initialize_distributed`)."""
    first = select_device(name)
    devices = [d for d in jax.devices() if d.platform == first.platform]
    if len(devices) == 1:
        return first
    return Mesh(np.array(devices), (DATA_AXIS,))


def _first_device(placement):
    return placement.devices.flat[0] if isinstance(placement, Mesh) else placement


def _replicated(placement):
    return NamedSharding(placement, P()) if isinstance(placement, Mesh) else placement


def _put(tree, sharding):
    """NumPy or one-device values (the same in every process) -> arrays with `sharding`."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_callback(np.shape(a), sharding,
                                               lambda index: np.asarray(a)[index]), tree)


def _fetch(tree):
    """Replicated arrays -> NumPy (each process reads its own copy)."""
    def get(a):
        return np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else np.asarray(a)
    return jax.tree_util.tree_map(get, tree)


def create_model(device=None):
    """The CNN module; on the CPU with `cpu_conv`'s convolution and pool (same numbers, faster).

    XLA:CPU's own convolution and max-pool gradient are slow for this model's small channel counts
    (see `flax_impl/cpu_conv.py`); other platforms get the stock module. `device` None means JAX's
    default device.
    """
    platform = (device if device is not None else jax.devices()[0]).platform
    if platform == "cpu":
        return CNN(conv_general_dilated=cpu_conv.conv_general_dilated, max_pool=cpu_conv.max_pool)
    return CNN()


# Forward-only graphs (evaluation, prediction) use the stock module on every platform: the CPU
# ops of `create_model` pay off in the gradient; XLA:CPU's own forward is faster (whole model,
# batch 1000: 90 ms vs 179 ms with `cpu_conv`) and equals it to <= 5e-7 relative.
INFERENCE_MODEL = CNN()


def logits(params, images):
    """The CNN's logits (N, 10) for NHWC `images`; jit it, or call it inside a jitted function."""
    return INFERENCE_MODEL.apply({"params": params}, images)


def create_train_state(rng, config, device=None):
    """Params drawn with torch's default init distributions from `rng`, and Optax Adam.

    `device`: a JAX device, a `Mesh` (the state is replicated on all its devices), or None.
    """
    model = create_model(None if device is None else _first_device(device))
    params = model.init(rng, jnp.ones((1, 28, 28, 1), jnp.float32))["params"]
    # torch.optim.Adam's defaults: betas (0.9, 0.999), eps 1e-8 (eps outside the sqrt).
    tx = optax.adam(learning_rate=config.lr, b1=0.9, b2=0.999, eps=1e-8)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    return state if device is None else _put(state, _replicated(device))


def cross_entropy(logits, labels, mask=None):
    """Mean cross-entropy of integer labels, as torch's nn.functional.cross_entropy; with a
    0/1 `mask`, the mean over the examples it keeps (the rest pad a batch for the mesh)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if mask is None:
        return losses.mean()
    return (losses * mask).sum() / mask.sum()


@jax.jit
def train_step(state, batch):
    """One Adam step on one batch, gradient and update in one jit region.

    `batch` is (images, labels), or (images, labels, mask) for a batch padded to a multiple of
    the mesh's size. On a mesh (batch sharded, state replicated) XLA all-reduces the gradient.
    """
    images, labels, *mask = batch

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, images)
        return cross_entropy(logits, labels, *mask)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, {"loss": loss}


@jax.jit
def eval_step(state, batch):
    """Summed loss, correct count and example count of one batch (padding excluded)."""
    images, labels, *mask = batch
    keep = mask[0] if mask else jnp.ones(labels.shape, jnp.float32)
    out = logits(state.params, images)
    losses = optax.softmax_cross_entropy_with_integer_labels(out, labels)
    loss_sum = (losses * keep).sum() if mask else losses.sum()
    correct = ((out.argmax(axis=1) == labels) * keep).sum()
    return {"loss": loss_sum, "correct": correct, "examples": keep.sum()}


def evaluate(state, batches):
    """Exact mean loss and accuracy over all batches."""
    loss_sum, correct, examples = 0.0, 0, 0
    for batch in batches:
        out = _fetch(eval_step(state, batch))
        loss_sum += float(out["loss"])
        correct += int(round(float(out["correct"])))
        examples += int(round(float(out["examples"])))
    return {"loss": loss_sum / examples, "accuracy": correct / examples,
            "correct": correct, "examples": examples}


def to_batch(device):
    """Loader tensors -> NumPy at the one boundary -> arrays on the training device or mesh.

    On a mesh the batch is split along the `data` axis; one not divisible by the mesh's size is
    padded with zero images and gets a mask (the global batch stays what --batch-size says).
    """
    if not isinstance(device, Mesh):
        def move(images, labels):
            return jax.device_put(to_numpy_batch(images, labels), device)
        return move

    sharding = NamedSharding(device, P(DATA_AXIS))

    def move_sharded(images, labels):
        x, y = to_numpy_batch(images, labels)
        pad = -len(y) % device.size
        if not pad:
            return _put((x, y), sharding)
        mask = np.concatenate([np.ones(len(y), np.float32), np.zeros(pad, np.float32)])
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros(pad, y.dtype)])
        return _put((x, y, mask), sharding)
    return move_sharded


def state_to_arrays(state):
    """Canonical weights and Adam state (torch layouts) as NumPy arrays."""
    params = convert.params_to_canonical(_fetch(state.params))
    adam = state.opt_state[0]  # optax.adam = chain(scale_by_adam, scale_by_learning_rate)
    optimizer = {}
    mu = convert.params_to_canonical(_fetch(adam.mu))
    nu = convert.params_to_canonical(_fetch(adam.nu))
    for key in mu:
        optimizer[f"exp_avg.{key}"] = mu[key]
        optimizer[f"exp_avg_sq.{key}"] = nu[key]
    optimizer["step"] = np.asarray([float(_fetch(adam.count))], dtype=np.float32)
    return params, optimizer


def state_from_arrays(state, params, optimizer):
    """A state holding canonical weights and (if any) Adam state, on `state`'s devices."""
    flax_params = convert.canonical_to_params(params)
    if optimizer:
        adam = state.opt_state[0]
        mu = convert.canonical_to_params(
            {k: optimizer[f"exp_avg.{k}"] for k in params})
        nu = convert.canonical_to_params(
            {k: optimizer[f"exp_avg_sq.{k}"] for k in params})
        count = int(optimizer["step"][0])
        adam = adam._replace(count=np.asarray(count, dtype=np.int32), mu=mu, nu=nu)
        opt_state = (adam,) + tuple(state.opt_state[1:])
        step = count
    else:
        opt_state = state.tx.init(flax_params)
        step = 0
    new = state.replace(step=np.asarray(step, dtype=np.int32), params=flax_params,
                        opt_state=opt_state)
    sharding = jax.tree_util.tree_leaves(state.params)[0].sharding
    return _put(new, sharding)


def _agree_stop(wants_to_stop):
    """Any process's stop request stops them all (several processes only)."""
    flags = multihost_utils.process_allgather(np.asarray([wants_to_stop], np.int32))
    return bool(np.asarray(flags).any())


def make_hooks(device):
    """The Flax side's plug-ins for the shared loop; `device` may be a mesh."""
    def step(state, batch):
        state, metrics = train_step(state, batch)
        return state, float(_fetch(metrics["loss"]))

    return Hooks(
        framework="flax",
        device=describe_device(device),
        versions={"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
        to_batch=to_batch(device),
        train_step=step,
        evaluate=evaluate,
        state_to_arrays=state_to_arrays,
        state_from_arrays=state_from_arrays,
        writer=jax.process_index() == 0,
        agree_stop=_agree_stop if jax.process_count() > 1 else bool,
    )


def train_and_evaluate(config):
    """Train and evaluate as `config` says; write the outputs to `config.out_dir`.

    Args:
      config: a `mnist_common.config.Config`.
    Returns:
      The metrics dict also written to `metrics.json`.
    """
    initialize_distributed()
    device = select_placement(config.device)
    rng = jax.random.PRNGKey(config.seed)
    rng, init_rng = jax.random.split(rng)
    state = create_train_state(init_rng, config, device)
    return fit(config, make_hooks(device), state)


def main(argv=None):
    config = parse_config("flax", "Train the tutorial's MNIST CNN with Flax Linen and Optax.", argv)
    train_and_evaluate(config)


if __name__ == "__main__":
    run_cli(main, prog="python -m flax_impl.train")

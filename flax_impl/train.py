"""Train the tutorial's CNN with Flax Linen and Optax: `python -m flax_impl.train --help`."""

import platform

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

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
    """`cpu (x86_64)` or the GPU's name."""
    if device.platform == "cpu":
        return f"cpu ({platform.machine()})"
    return f"{device.platform} ({device.device_kind})"


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


def create_train_state(rng, config, device=None):
    """Params drawn with torch's default init distributions from `rng`, and Optax Adam."""
    model = create_model(device)
    params = model.init(rng, jnp.ones((1, 28, 28, 1), jnp.float32))["params"]
    # torch.optim.Adam's defaults: betas (0.9, 0.999), eps 1e-8 (eps outside the sqrt).
    tx = optax.adam(learning_rate=config.lr, b1=0.9, b2=0.999, eps=1e-8)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    return jax.device_put(state, device) if device is not None else state


def cross_entropy(logits, labels):
    """Mean cross-entropy of integer labels, as torch's nn.functional.cross_entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@jax.jit
def train_step(state, batch):
    """One Adam step on one batch, gradient and update in one jit region."""
    images, labels = batch

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, images)
        return cross_entropy(logits, labels)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, {"loss": loss}


@jax.jit
def eval_step(state, batch):
    """Summed loss and correct count of one batch."""
    images, labels = batch
    logits = state.apply_fn({"params": state.params}, images)
    loss_sum = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    correct = (logits.argmax(axis=1) == labels).sum()
    return {"loss": loss_sum, "correct": correct}


def evaluate(state, batches):
    """Exact mean loss and accuracy over all batches."""
    loss_sum, correct, examples = 0.0, 0, 0
    for batch in batches:
        out = eval_step(state, batch)
        loss_sum += float(out["loss"])
        correct += int(out["correct"])
        examples += len(batch[1])
    return {"loss": loss_sum / examples, "accuracy": correct / examples,
            "correct": correct, "examples": examples}


def to_batch(device):
    """Loader tensors -> NumPy at the one boundary -> arrays on the training device."""
    def move(images, labels):
        return jax.device_put(to_numpy_batch(images, labels), device)
    return move


def state_to_arrays(state):
    """Canonical weights and Adam state (torch layouts) as NumPy arrays."""
    params = convert.params_to_canonical(jax.device_get(state.params))
    adam = state.opt_state[0]  # optax.adam = chain(scale_by_adam, scale_by_learning_rate)
    optimizer = {}
    mu = convert.params_to_canonical(jax.device_get(adam.mu))
    nu = convert.params_to_canonical(jax.device_get(adam.nu))
    for key in mu:
        optimizer[f"exp_avg.{key}"] = mu[key]
        optimizer[f"exp_avg_sq.{key}"] = nu[key]
    optimizer["step"] = np.asarray([float(adam.count)], dtype=np.float32)
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
    return jax.device_put(new, sharding)


def make_hooks(device):
    """The Flax side's plug-ins for the shared loop."""
    def step(state, batch):
        state, metrics = train_step(state, batch)
        return state, float(metrics["loss"])

    return Hooks(
        framework="flax",
        device=describe_device(device),
        versions={"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
        to_batch=to_batch(device),
        train_step=step,
        evaluate=evaluate,
        state_to_arrays=state_to_arrays,
        state_from_arrays=state_from_arrays,
    )


def train_and_evaluate(config):
    """Train and evaluate as `config` says; write the outputs to `config.out_dir`.

    Args:
      config: a `mnist_common.config.Config`.
    Returns:
      The metrics dict also written to `metrics.json`.
    """
    device = select_device(config.device)
    rng = jax.random.PRNGKey(config.seed)
    rng, init_rng = jax.random.split(rng)
    state = create_train_state(init_rng, config, device)
    return fit(config, make_hooks(device), state)


def main(argv=None):
    config = parse_config("flax", "Train the tutorial's MNIST CNN with Flax Linen and Optax.", argv)
    train_and_evaluate(config)


if __name__ == "__main__":
    run_cli(main, prog="python -m flax_impl.train")

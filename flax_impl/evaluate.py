"""Evaluate canonical weights with Flax: `python -m flax_impl.evaluate --weights F`."""

import jax

from flax_impl.train import create_train_state, make_hooks, select_device, state_from_arrays
from mnist_common.config import Config
from mnist_common.errors import run_cli
from mnist_common.evaluation import evaluate_weights


def load_model(params, device_flag):
    """A Flax train state holding `params` (canonical arrays) on the chosen device."""
    device = select_device(device_flag)
    state = create_train_state(jax.random.PRNGKey(0), Config(), device)
    return make_hooks(device), state_from_arrays(state, params, {})


def main(argv=None):
    return evaluate_weights("flax", argv, load_model)


if __name__ == "__main__":
    run_cli(main, prog="python -m flax_impl.evaluate")

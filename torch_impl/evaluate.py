"""Evaluate canonical weights with PyTorch: `python -m torch_impl.evaluate --weights F`."""

from mnist_common.config import Config
from mnist_common.errors import run_cli
from mnist_common.evaluation import evaluate_weights
from torch_impl.train import create_train_state, make_hooks, select_device, state_from_arrays


def load_model(params, device_flag):
    """A torch train state holding `params` (canonical arrays) on the chosen device."""
    device = select_device(device_flag)
    state = create_train_state(Config(), device)
    return make_hooks(device), state_from_arrays(state, params, {})


def main(argv=None):
    return evaluate_weights("torch", argv, load_model)


if __name__ == "__main__":
    run_cli(main, prog="python -m torch_impl.evaluate")

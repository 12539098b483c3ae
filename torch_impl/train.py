"""Train the tutorial's CNN with PyTorch: `python -m torch_impl.train --help`."""

import dataclasses
import platform
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from torch import nn

from mnist_common.config import parse_config
from mnist_common.errors import UsageError, run_cli
from mnist_common.training import Hooks, fit
from mnist_common.weights import CANONICAL_SHAPES
from torch_impl import distributed
from torch_impl.model import CNN


class TrainState(NamedTuple):
    model: CNN
    optimizer: torch.optim.Adam
    device: torch.device


def select_device(name):
    """`auto` -> CUDA when present, else CPU; an absent device asked for is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is visible to PyTorch")
        return torch.device("cuda")
    if name == "cpu":
        return torch.device("cpu")
    raise UsageError(f"--device {name}: unknown device (choose auto, cpu, cuda or gpu)")


def describe_device(device):
    """`cpu (x86_64, 2 threads)` or the GPU's name."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def create_train_state(config, device):
    """The model with torch's default initialisation under `config.seed`, and its Adam."""
    torch.manual_seed(config.seed)
    model = CNN().to(device)
    # Adam's defaults are the tutorial's: betas (0.9, 0.999), eps 1e-8.
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    return TrainState(model, optimizer, device)


def to_batch(state_device):
    """Loader tensors (NCHW float32, int64) moved to the training device."""
    def move(images, labels):
        return (images.to(state_device, non_blocking=True),
                labels.to(state_device, non_blocking=True))
    return move


def train_step(state, batch):
    """One Adam step on one batch; returns (state, loss)."""
    images, labels = batch
    state.model.train()
    state.optimizer.zero_grad(set_to_none=True)
    logits = state.model(images)
    loss = nn.functional.cross_entropy(logits, labels)
    loss.backward()
    state.optimizer.step()
    return state, loss.item()


@torch.no_grad()
def eval_step(model, batch):
    """Summed loss and correct count of one batch."""
    images, labels = batch
    logits = model(images)
    loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum")
    correct = (logits.argmax(dim=1) == labels).sum()
    return {"loss": loss_sum, "correct": correct}


def evaluate(state, batches):
    """Exact mean loss and accuracy over all batches."""
    state.model.eval()
    loss_sum, correct, examples = 0.0, 0, 0
    for batch in batches:
        out = eval_step(state.model, batch)
        loss_sum += out["loss"].item()
        correct += int(out["correct"].item())
        examples += len(batch[1])
    return {"loss": loss_sum / examples, "accuracy": correct / examples,
            "correct": correct, "examples": examples}


def state_to_arrays(state):
    """Canonical weights and Adam state (torch layouts) as NumPy arrays."""
    named = dict(state.model.named_parameters())
    params = {k: named[k].detach().cpu().numpy().copy() for k in CANONICAL_SHAPES}
    optimizer = {}
    for key in CANONICAL_SHAPES:
        slot = state.optimizer.state.get(named[key], {})
        if not slot:
            return params, {}
        optimizer[f"exp_avg.{key}"] = slot["exp_avg"].detach().cpu().numpy().copy()
        optimizer[f"exp_avg_sq.{key}"] = slot["exp_avg_sq"].detach().cpu().numpy().copy()
        step = slot["step"]
    optimizer["step"] = np.asarray([float(step)], dtype=np.float32)
    return params, optimizer


def state_from_arrays(state, params, optimizer):
    """Load canonical weights and (if any) Adam state into `state`, in place."""
    named = dict(state.model.named_parameters())
    with torch.no_grad():
        for key in CANONICAL_SHAPES:
            named[key].copy_(torch.from_numpy(np.asarray(params[key])))
    state.optimizer.state.clear()
    if optimizer:
        step = float(optimizer["step"][0])
        for key in CANONICAL_SHAPES:
            state.optimizer.state[named[key]] = {
                "step": torch.tensor(step, dtype=torch.float32),
                "exp_avg": torch.from_numpy(optimizer[f"exp_avg.{key}"].copy()).to(state.device),
                "exp_avg_sq": torch.from_numpy(
                    optimizer[f"exp_avg_sq.{key}"].copy()).to(state.device),
            }
    return state


def make_hooks(device):
    """The torch side's plug-ins for the shared loop."""
    return Hooks(
        framework="torch",
        device=describe_device(device),
        versions={"torch": torch.__version__, "torchvision": torchvision.__version__},
        to_batch=to_batch(device),
        train_step=train_step,
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
    if distributed.requested():  # started by torchrun with several processes
        return _train_distributed(config)
    device = select_device(config.device)
    state = create_train_state(config, device)
    return fit(config, make_hooks(device), state)


def _train_distributed(config):
    """One rank of a data-parallel run (see `torch_impl/distributed.py`)."""
    context = distributed.init(config.device)
    try:
        distributed.check_batch_size(config.batch_size, context)
        state = distributed.wrap(create_train_state(config, context.device), context)
        hooks = dataclasses.replace(
            make_hooks(context.device),
            device=distributed.describe(context, describe_device(context.device)),
            to_batch=distributed.to_batch(context),
            train_step=distributed.train_step,
            evaluate=distributed.evaluate,
            writer=context.rank == 0,
            agree_stop=distributed.agree_stop(context))
        return fit(config, hooks, state)
    finally:
        distributed.shutdown()


def main(argv=None):
    config = parse_config("torch", "Train the tutorial's MNIST CNN with PyTorch.", argv)
    train_and_evaluate(config)


if __name__ == "__main__":
    run_cli(main, prog="python -m torch_impl.train")

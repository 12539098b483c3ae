"""The PyTorch engine: model, train step, evaluation and the state's canonical arrays.

The training CLI, the evaluation CLI, the benchmark and the parity tests all run these
functions; `flax_impl/backend.py` defines the same names with the same parameters
(`mnist_common/backend.py` is the interface). Layout: NCHW.
"""

import platform
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from torch import nn

from mnist_common.architecture import CANONICAL_SHAPES
from mnist_common.errors import UsageError
from torch_impl import distributed
from torch_impl.model import CNN

FRAMEWORK = "torch"


class Placement(NamedTuple):
    device: torch.device
    group: distributed.Group | None  # None: one process


class TrainState(NamedTuple):
    model: CNN
    optimizer: torch.optim.Adam
    placement: Placement
    ddp: nn.Module | None  # the model wrapped in DistributedDataParallel, in a group


def versions():
    return {"torch": torch.__version__, "torchvision": torchvision.__version__}


def _select_device(name):
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


def _set_precision(precision):
    """highest: true float32 convolutions and matmuls; tf32: both may use TF32 (CUDA only)."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32  # cuDNN's own default is True


def select_placement(device, precision="highest"):
    _set_precision(precision)
    if distributed.requested():  # started by torchrun with several processes
        group = distributed.init(device)
        return Placement(group.device, group)
    return Placement(_select_device(device), None)


def describe_placement(placement):
    """`cpu (x86_64, 2 threads)` or the GPU's name; with the process count in a group."""
    device = placement.device
    if device.type == "cuda":
        text = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        text = f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
    return text if placement.group is None else distributed.describe(placement.group, text)


def is_writer(placement):
    return placement.group is None or placement.group.rank == 0


def agree_stop(placement, wants_to_stop):
    if placement.group is None:
        return bool(wants_to_stop)
    return distributed.agree_stop(placement.group, wants_to_stop)


def check_batch_size(batch_size, placement):
    if placement.group is not None:
        distributed.check_batch_size(batch_size, placement.group)


def release_placement(placement):
    if placement.group is not None:
        distributed.shutdown()


def create_model(placement):
    return CNN().to(placement.device)


def create_train_state(config, placement):
    torch.manual_seed(config.seed)
    model = create_model(placement)
    # Adam's defaults are the tutorial's: betas (0.9, 0.999), eps 1e-8.
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    ddp = None if placement.group is None else distributed.wrap(model, placement.group)
    return TrainState(model, optimizer, placement, ddp)


def cross_entropy(logits, labels, mask=None):
    """Mean cross-entropy of integer labels; with a 0/1 `mask`, the mean over the examples it
    keeps."""
    if mask is None:
        return nn.functional.cross_entropy(logits, labels)
    losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    return (losses * mask).sum() / mask.sum()


def place_batch(placement, images, labels):
    """Loader tensors -> (images, labels) on the device; in a group, this rank's share."""
    if placement.group is not None:
        return distributed.place_batch(placement.group, images, labels)
    return (images.to(placement.device, non_blocking=True),
            labels.to(placement.device, non_blocking=True))


def place_split(placement, images, labels):
    """A whole split (uint8 images (N, 28, 28), labels) held on the device, for `gather_batch`;
    None in a group, where each rank cuts its share of host batches (`place_batch`)."""
    if placement.group is not None:
        return None
    return (torch.from_numpy(images).to(placement.device),
            torch.from_numpy(labels).to(placement.device))


def gather_batch(split, indices):
    """The batch of `indices` cut from a placed split on its device: ToTensor's arithmetic
    (uint8 -> float32, / 255) exactly, as `mnist_common.loaders` does on the host."""
    images, labels = split
    index = torch.from_numpy(indices).to(images.device)
    return images[index].unsqueeze(1).to(torch.float32).div(255), labels[index]  # (B, 1, 28, 28)


def steps_per_dispatch(placement):
    """Train steps per call of `train_steps` by default: 1 on the CPU (nothing to gain), else
    None (an epoch: the host reads the losses back once per epoch)."""
    return 1 if placement.device.type == "cpu" else None


def train_step(state, batch):
    """One Adam step on one batch; the loss stays on the device."""
    if state.ddp is not None:
        return state, {"loss": distributed.train_step(state.ddp, state.optimizer, batch)}
    images, labels = batch
    state.model.train()
    state.optimizer.zero_grad(set_to_none=True)
    logits = state.model(images)  # (N, 10)
    loss = cross_entropy(logits, labels)
    loss.backward()
    state.optimizer.step()
    return state, {"loss": loss.detach()}


def train_steps(state, batches):
    """Consecutive train steps; the losses come back to the host once, at the end."""
    losses = []
    for batch in batches:
        state, metrics = train_step(state, batch)
        losses.append(metrics["loss"])
    return state, torch.stack(losses).cpu().numpy()


@torch.no_grad()
def _eval_step(model, batch):
    """Summed loss and correct count of one batch (on the device)."""
    images, labels, *_ = batch
    logits = model(images)
    loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum")
    correct = (logits.argmax(dim=1) == labels).sum()
    return torch.stack([loss_sum.double(), correct.double(),
                        torch.tensor(len(labels), dtype=torch.float64, device=labels.device)])


def evaluate(state, batches):
    """Exact mean loss and accuracy over all batches (one host read at the end)."""
    state.model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=state.placement.device)
    for batch in batches:
        totals += _eval_step(state.model, batch)
    if state.placement.group is not None:
        totals = distributed.all_sum(totals)
    loss_sum, correct, examples = totals.tolist()
    correct, examples = int(round(correct)), int(round(examples))
    return {"loss": loss_sum / examples, "accuracy": correct / examples,
            "correct": correct, "examples": examples}


@torch.no_grad()
def logits(state, batch):
    state.model.eval()
    return state.model(batch[0]).cpu().numpy()


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
    device = state.placement.device
    with torch.no_grad():
        for key in CANONICAL_SHAPES:
            named[key].copy_(torch.from_numpy(np.asarray(params[key])))
    state.optimizer.state.clear()
    if optimizer:
        step = float(optimizer["step"][0])
        for key in CANONICAL_SHAPES:
            state.optimizer.state[named[key]] = {
                "step": torch.tensor(step, dtype=torch.float32),
                "exp_avg": torch.from_numpy(optimizer[f"exp_avg.{key}"].copy()).to(device),
                "exp_avg_sq": torch.from_numpy(optimizer[f"exp_avg_sq.{key}"].copy()).to(device),
            }
    return state

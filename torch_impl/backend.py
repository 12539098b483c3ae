"""The PyTorch engine: model, train step, evaluation and the state's canonical arrays.

The training CLI, the evaluation CLI, the benchmark and the parity tests all run these
functions; `flax_impl/backend.py` defines the same names with the same parameters
(`mnist_common/backend.py` is the interface). Layout: NCHW tensors; on the CPU the model and
its activations are stored channels_last (NHWC in memory), which oneDNN runs faster.
"""

import platform
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from torch import nn

from mnist_common.architecture import CANONICAL_SHAPES
from mnist_common.errors import UsageError
from mnist_common.loaders import PIXELS
from mnist_common.placement import Placement
from torch_impl import distributed
from torch_impl.model import CNN

FRAMEWORK = "torch"


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


def _set_precision(precision, device):
    """highest: true float32 convolutions and matmuls; tf32: both may use TF32 (CUDA only;
    the CPU computes float32 either way)."""
    tf32 = precision == "tf32" and device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32  # cuDNN's own default is True


def select_placement(device, precision="highest"):
    first = _select_device(device)
    _set_precision(precision, first)
    distributed.init()  # joins the group when torchrun started several processes
    group = distributed.group_over(first)
    return Placement(first if group is None else group.device, group)


def describe_placement(placement):
    """`cpu (x86_64, 2 threads)` or the GPU's name; with the process count in a group."""
    device = placement.device
    if device.type == "cuda":
        text = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        text = f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
    return text if placement.group is None else distributed.describe(placement.group, text)


def memory_format(placement):
    """channels_last on the CPU (oneDNN's convolutions measured faster in it, and the parity
    suite holds), NCHW elsewhere."""
    return "channels_last" if placement.device.type == "cpu" else "NCHW"


def create_model(placement):
    layout = {"channels_last": torch.channels_last, "NCHW": torch.contiguous_format}
    return CNN().to(placement.device, memory_format=layout[memory_format(placement)])


def create_train_state(config, placement):
    torch.manual_seed(config.seed)
    model = create_model(placement)
    # Adam's defaults are the tutorial's: betas (0.9, 0.999), eps 1e-8.
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    ddp = None if placement.group is None else distributed.replicate(placement.group, model)
    return TrainState(model, optimizer, placement, ddp)


def cross_entropy(logits, labels, mask=None):
    """Mean cross-entropy of integer labels; with a 0/1 `mask`, the mean over the examples it
    keeps."""
    if mask is None:
        return nn.functional.cross_entropy(logits, labels)
    losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    return (losses * mask).sum() / mask.sum()


def place_batch(placement, images, labels):
    """A host batch (NumPy, NCHW) -> tensors on the device; in a group, this rank's share.
    (One channel: an NCHW batch is channels_last already.)"""
    if placement.group is not None:
        return distributed.place_batch(placement.group, images, labels)
    return (torch.as_tensor(images).to(placement.device, non_blocking=True),
            torch.as_tensor(labels).to(placement.device, non_blocking=True))


def place_split(placement, images, labels):
    """A whole split (uint8 images (N, 28, 28), labels) and the pixel table held on the device,
    for `gather_batch`; None in a group, where each rank takes its share of host batches."""
    if placement.group is not None:
        return None
    return tuple(torch.from_numpy(a).to(placement.device) for a in (images, labels, PIXELS))


def gather_batch(split, indices):
    """The batch of `indices` cut from a placed split on its device; pixels from the table."""
    images, labels, pixels = split
    index = torch.from_numpy(indices).to(images.device)
    return pixels[images[index].int()].unsqueeze(1), labels[index]  # (B, 1, 28, 28)


def steps_per_dispatch(placement):
    """Train steps per call of `train_steps` by default: 1 on the CPU (nothing to gain), else
    None (an epoch: the host reads the losses back once per epoch)."""
    return 1 if placement.device.type == "cpu" else None


def _backward_in_group(group, logits, labels, mask):
    """Back-propagate the global batch's mean loss from this rank's share; that mean, on the
    device. DDP averages the ranks' gradients, so each rank's objective is its share's masked
    loss sum x world size / the real images' count over all shares."""
    losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    keep = mask[0] if mask else torch.ones_like(losses)
    loss_sum = (losses * keep).sum()
    totals = distributed.all_sum(group, torch.stack([loss_sum.detach(), keep.sum()]))
    (loss_sum * (group.world_size / totals[1]).to(loss_sum.dtype)).backward()
    return totals[0] / totals[1]


def train_step(state, batch):
    """One Adam step on one batch (in a group, on the global batch); the loss stays on the
    device: no host read."""
    images, labels, *mask = batch
    model = state.model if state.ddp is None else state.ddp
    model.train()
    state.optimizer.zero_grad(set_to_none=True)
    logits = model(images)  # (N, 10)
    if state.ddp is None:
        loss = cross_entropy(logits, labels, *mask)
        loss.backward()
    else:
        loss = _backward_in_group(state.placement.group, logits, labels, mask)
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
    """Summed loss, correct count and example count of one batch (padding excluded), on the
    device."""
    images, labels, *mask = batch
    logits = model(images)
    losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    keep = mask[0] if mask else torch.ones_like(losses)
    loss_sum = (losses * keep).sum() if mask else losses.sum()
    correct = ((logits.argmax(dim=1) == labels) * keep).sum()
    return torch.stack([loss_sum.double(), correct.double(), keep.sum().double()])


def evaluate(state, batches):
    """Exact mean loss and accuracy over all batches (one host read at the end)."""
    state.model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=state.placement.device)
    for batch in batches:
        totals += _eval_step(state.model, batch)
    if state.placement.group is not None:
        totals = distributed.all_sum(state.placement.group, totals)
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
    """The state holding canonical weights and (if any) Adam state, on `state`'s placement.
    Like `train_step`, it consumes `state`: it loads the arrays into it, in place."""
    named = dict(state.model.named_parameters())
    with torch.no_grad():
        for key in CANONICAL_SHAPES:
            named[key].copy_(torch.from_numpy(np.asarray(params[key])))
    state.optimizer.state.clear()
    if optimizer:
        step = float(optimizer["step"][0])
        for key in CANONICAL_SHAPES:
            state.optimizer.state[named[key]] = {  # moments in the weight's memory format
                "step": torch.tensor(step, dtype=torch.float32),
                "exp_avg": torch.empty_like(named[key]).copy_(
                    torch.from_numpy(optimizer[f"exp_avg.{key}"].copy())),
                "exp_avg_sq": torch.empty_like(named[key]).copy_(
                    torch.from_numpy(optimizer[f"exp_avg_sq.{key}"].copy())),
            }
    return state

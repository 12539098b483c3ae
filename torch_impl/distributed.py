"""Data-parallel training under `torchrun`: DistributedDataParallel over shares of each batch.

`torch_impl.backend.select_placement` joins a group when `torchrun` (or any launcher that sets
`WORLD_SIZE` > 1, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) starts it. The global batch
stays `--batch-size`: every rank cuts the same seeded batch from the shared loader and keeps a
contiguous share of it (`shard`), so the union of the ranks' shares is exactly the
single-process batch. Each rank's loss is its share's summed cross-entropy times
world_size / global batch size; DDP averages the gradients over the ranks, which gives the
gradient of the global batch's mean loss, as one process computes it (up to float32 summation
order). Evaluation is sharded the same way and its sums are all-reduced. Only rank 0 writes files
and shows progress (`backend.is_writer`). Backends: gloo on the CPU, NCCL on CUDA (one GPU per rank,
`cuda:LOCAL_RANK`).
"""

import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mnist_common.errors import UsageError


class Group(NamedTuple):
    """This process's place in the data-parallel group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def requested():
    """True when a launcher asked for more than one process (torchrun sets WORLD_SIZE)."""
    return _env_int("WORLD_SIZE", 1) > 1


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not a whole number") from None


def init(device_name):
    """Join the process group torchrun describes; the device is cuda:LOCAL_RANK or the CPU."""
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise UsageError(f"WORLD_SIZE is set but {name} is not: launch with `torchrun "
                             f"--nproc_per_node=N -m torch_impl.train ...`")
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = device_name in ("cuda", "gpu") or (device_name == "auto"
                                                  and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device_name}: no CUDA device is visible to PyTorch")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank}: this machine has only "
                             f"{torch.cuda.device_count()} CUDA device(s); start at most that "
                             f"many processes per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    dist.init_process_group(backend)
    return Group(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(n, rank, world_size):
    """This rank's contiguous share of n items: sizes differ by at most one, lower ranks first."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def wrap(model, group):
    """`model` in DistributedDataParallel (which broadcasts rank 0's parameters: every rank
    starts from the same weights)."""
    device_ids = [group.device.index] if group.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def place_batch(group, images, labels):
    """Loader tensors of the global batch -> (this rank's share on its device, global size)."""
    part = shard(len(labels), group.rank, group.world_size)
    return (images[part].to(group.device, non_blocking=True),
            labels[part].to(group.device, non_blocking=True), len(labels))


def all_sum(tensor):
    """The element-wise sum over the ranks, in float64."""
    tensor = tensor.to(torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def train_step(ddp, optimizer, batch):
    """One Adam step on the global batch; returns the global batch's mean loss (a tensor)."""
    images, labels, global_size = batch
    world = dist.get_world_size()
    ddp.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum = nn.functional.cross_entropy(ddp(images), labels, reduction="sum")
    # DDP divides the summed gradients by world_size: scale so the result is d(sum / global)/dw.
    (loss_sum * (world / global_size)).backward()
    optimizer.step()
    (total,) = all_sum(torch.tensor([loss_sum.item()], device=images.device)).tolist()
    return torch.tensor(total / global_size, dtype=torch.float64)


def agree_stop(group, wants_to_stop):
    """Stop together: any rank's request stops all of them at the same step."""
    flag = torch.tensor([1.0 if wants_to_stop else 0.0], device=group.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def describe(group, device_description):
    return (f"{device_description} x {group.world_size} processes "
            f"({group.backend}, DistributedDataParallel)")


def check_batch_size(batch_size, group):
    """Every rank needs at least one image of every full batch."""
    if batch_size < group.world_size:
        raise UsageError(f"--batch-size {batch_size} is smaller than the {group.world_size} "
                         f"processes it is shared among")

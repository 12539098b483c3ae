"""Data-parallel training under `torchrun`: DistributedDataParallel over equal shares of a batch.

`flax_impl/distributed.py` defines the same functions with the same parameters, in the same
order, for a JAX device mesh; both follow one scheme. `torch_impl.backend.select_placement`
joins a group when `torchrun` (or any launcher that sets `WORLD_SIZE` > 1, `RANK`,
`LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) starts it. The global batch stays `--batch-size`:
every rank reads the same seeded batch, pads it to a multiple of the world size with zero images
and a 0/1 mask (`mnist_common.loaders.pad_batch`, as a JAX mesh does), and keeps its contiguous
equal share, so the union of the shares is exactly the single-process batch and any batch size
works. The step's loss is the masked sum over every share divided by the real images' count,
and its gradient is that mean's (`torch_impl.backend.train_step`: DDP averages the ranks'
gradients). Evaluation is sharded the same way and its sums are all-reduced. Only rank 0 writes
files and shows progress (`mnist_common.placement.is_writer`). Collectives: gloo for CPU tensors,
NCCL for CUDA ones (one GPU per rank, `cuda:LOCAL_RANK`).
"""

import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mnist_common.errors import UsageError, first_line
from mnist_common.loaders import pad_batch
from mnist_common.peers import Start, host_name, port_number, waiting_for_peers, whole_number


class Group(NamedTuple):
    """This process's place in the data-parallel group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def requested():
    """True when a launcher asked for more than one process (torchrun sets WORLD_SIZE)."""
    value = os.environ.get("WORLD_SIZE")
    return value is not None and whole_number("WORLD_SIZE", value, 1) > 1


def start_from_env():
    """WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, checked before anything
    waits: a value left over in a shell is one line, not a silent wait."""
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise UsageError(f"WORLD_SIZE is set but {name} is not: launch with `torchrun "
                             f"--nproc_per_node=N -m torch_impl.train ...`")
    world_size = whole_number("WORLD_SIZE", os.environ["WORLD_SIZE"], 1)
    rank = whole_number("RANK", os.environ["RANK"], 0, world_size, f"WORLD_SIZE={world_size}")
    _local_rank(world_size)
    host = host_name("MASTER_ADDR", os.environ["MASTER_ADDR"])
    port = port_number("MASTER_PORT", os.environ["MASTER_PORT"])
    return Start(world_size, rank, f"{host}:{port}")


def _local_rank(world_size):
    return whole_number("LOCAL_RANK", os.environ.get("LOCAL_RANK", "0"), 0, world_size,
                        f"WORLD_SIZE={world_size}")


def init():
    """Join the process group torchrun describes, if it asked for one (before any device is
    used); gloo serves CPU tensors and, where CUDA is present, NCCL serves CUDA ones. The wait
    for the other ranks is announced and bounded (`mnist_common.peers`)."""
    if not requested():
        return
    start = start_from_env()
    with waiting_for_peers(start.world_size, start.address, start.rank,
                           "the same WORLD_SIZE, MASTER_ADDR and MASTER_PORT and its own RANK"):
        try:
            dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available()
                                    else "gloo")
        except RuntimeError as err:  # DistNetworkError: e.g. the port is taken
            raise UsageError(f"MASTER_ADDR:MASTER_PORT {start.address}: cannot join the group "
                             f"({first_line(err)})") from None


def group_over(device):
    """This process's group for a run on `device` (CUDA: cuda:LOCAL_RANK), or None outside a
    group."""
    if not dist.is_initialized():
        return None
    local_rank = _local_rank(dist.get_world_size())
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank}: this machine has only "
                             f"{torch.cuda.device_count()} CUDA device(s); start at most that "
                             f"many processes per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return Group(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()


def replicate(group, value):
    """`value`, a model, in DistributedDataParallel, which broadcasts rank 0's parameters
    (every rank starts from the same weights) and averages the gradients over the ranks."""
    device_ids = [group.device.index] if group.device.type == "cuda" else None
    return DistributedDataParallel(value, device_ids=device_ids)


def place_batch(group, images, labels):
    """A host batch of the global size -> this rank's equal share (images, labels[, mask]) as
    tensors on its device."""
    padded = pad_batch(images, labels, group.world_size)
    size = len(padded[1]) // group.world_size
    share = slice(group.rank * size, (group.rank + 1) * size)
    return tuple(torch.as_tensor(a[share]).to(group.device, non_blocking=True) for a in padded)


def all_sum(group, values):
    """The element-wise sum of `values` over the ranks, in float64, on the device: the host
    waits for nothing."""
    values = values.to(torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def agree_stop(group, wants_to_stop):
    """Stop together: any rank's request stops all of them at the same step."""
    flag = torch.tensor([1.0 if wants_to_stop else 0.0], device=group.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def describe(group, device_description):
    collectives = "nccl" if group.device.type == "cuda" else "gloo"
    return (f"{device_description} x {group.world_size} processes "
            f"({collectives}, DistributedDataParallel)")

"""Where a run computes, the same for both engines: one device, or a data-parallel group.

A placement is `(device, group)`: the framework's device (the first of a JAX mesh) and the
framework's `distributed.Group` (`torch_impl/distributed.py`: torchrun ranks;
`flax_impl/distributed.py`: a device mesh over one or several processes), or None for one device
in one process. What does not depend on the framework is written here, once; what does is in
each engine's `distributed` module, which the functions below take from the engine.
"""

from typing import Any, NamedTuple


class Placement(NamedTuple):
    device: Any  # torch.device or jax.Device
    group: Any = None  # the engine's distributed.Group; None: one device, one process


def is_writer(placement):
    """True in the one process that writes files and prints (rank / process 0)."""
    return placement.group is None or placement.group.rank == 0


def agree_stop(backend, placement, wants_to_stop):
    """Whether every process stops now: any process's request stops them all."""
    if placement.group is None:
        return bool(wants_to_stop)
    return backend.distributed.agree_stop(placement.group, wants_to_stop)


def release(backend, placement):
    """Leave the data-parallel group, if any."""
    if placement.group is not None:
        backend.distributed.shutdown()

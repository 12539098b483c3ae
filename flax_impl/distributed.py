"""Data-parallel training with JAX: a 1-D `data` mesh, the batch sharded, the state replicated.

`torch_impl/distributed.py` defines the same functions with the same parameters, in the same
order, for torchrun ranks; both follow one scheme. `flax_impl.backend.select_placement` builds a
mesh over every device of the chosen platform (with `--xla_force_host_platform_device_count=N`,
N CPU devices), and over several processes after `jax.distributed.initialize`, which
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID ask for. The global batch stays
`--batch-size`: one not divisible by the mesh's size is padded with zero images and a 0/1 mask
(`mnist_common.loaders.pad_batch`, as torch's ranks do), and each device takes its contiguous
equal share. XLA all-reduces the gradient, the loss and evaluation's sums inside the jitted
step. Only process 0 writes files and shows progress (`mnist_common.placement.is_writer`).
"""

import math
import os
from typing import NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mnist_common.errors import UsageError, first_line
from mnist_common.loaders import pad_batch
from mnist_common.peers import Start, host_and_port, waiting_for_peers, whole_number

DATA_AXIS = "data"
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class Group(NamedTuple):
    """The devices (and processes) a data-parallel run spans."""

    mesh: Mesh
    rank: int  # jax.process_index()
    world_size: int  # jax.process_count()


def requested():
    """True when the environment asks for several processes."""
    return any(os.environ.get(name) for name in _DISTRIBUTED_ENV)


def start_from_env():
    """JAX_NUM_PROCESSES, JAX_PROCESS_ID and JAX_COORDINATOR_ADDRESS, checked before anything
    waits: a value left over in a shell is one line, not a silent wait."""
    present = [name for name in _DISTRIBUTED_ENV if os.environ.get(name)]
    if len(present) != len(_DISTRIBUTED_ENV):
        missing = ", ".join(n for n in _DISTRIBUTED_ENV if n not in present)
        raise UsageError(f"{', '.join(present)} set but {missing} not: set all three to train "
                         f"on several processes")
    world_size = whole_number("JAX_NUM_PROCESSES", os.environ["JAX_NUM_PROCESSES"], 1)
    rank = whole_number("JAX_PROCESS_ID", os.environ["JAX_PROCESS_ID"], 0, world_size,
                        f"JAX_NUM_PROCESSES={world_size}")
    address = os.environ["JAX_COORDINATOR_ADDRESS"]
    host_and_port("JAX_COORDINATOR_ADDRESS", address)
    return Start(world_size, rank, address)


def init():
    """`jax.distributed.initialize` from the three JAX_* variables, if they ask for it (before
    any device is used). The wait for the other processes is announced and bounded
    (`mnist_common.peers`): JAX's own client would abort the process, after 5 minutes."""
    if not requested():
        return
    start = start_from_env()
    with waiting_for_peers(start.world_size, start.address, start.rank,
                           "the same JAX_NUM_PROCESSES and JAX_COORDINATOR_ADDRESS and its own "
                           "JAX_PROCESS_ID") as seconds:
        try:  # JAX's own limit is later than ours, so ours speaks first
            jax.distributed.initialize(start.address, start.world_size, start.rank,
                                       initialization_timeout=math.ceil(seconds) + 60)
        except Exception as err:  # e.g. the coordinator's port is taken: JaxRuntimeError
            raise UsageError(f"JAX_COORDINATOR_ADDRESS {start.address}: cannot join the run "
                             f"({first_line(err)})") from None


def group_over(device):
    """A group over every device of `device`'s platform, or None for a single device."""
    devices = [d for d in jax.devices() if d.platform == device.platform]
    if len(devices) == 1:
        return None
    return Group(Mesh(np.array(devices), (DATA_AXIS,)), jax.process_index(), jax.process_count())


def shutdown():
    """Nothing to leave: JAX shuts its distributed client down at exit."""


def replicate(group, value):
    """`value`, a tree of arrays the same in every process, replicated on every device of the
    mesh."""
    return _put(value, NamedSharding(group.mesh, P()))


def place_batch(group, images, labels):
    """A host batch of the global size -> (images, labels[, mask]) split along the mesh."""
    return _put(pad_batch(images, labels, group.mesh.size), NamedSharding(group.mesh, P(DATA_AXIS)))


def all_sum(group, values):
    """The sums over the mesh: already there, since XLA adds the shards' parts inside the jitted
    step that computed `values` (a mesh's arrays are global), so nothing is left to add."""
    return values


def agree_stop(group, wants_to_stop):
    """Any process's stop request stops them all."""
    if group.world_size == 1:
        return bool(wants_to_stop)
    flags = multihost_utils.process_allgather(np.asarray([wants_to_stop], np.int32))
    return bool(np.asarray(flags).any())


def describe(group, device_description):
    hosts = f" on {group.world_size} processes" if group.world_size > 1 else ""
    return (f"{device_description} x {group.mesh.size} devices{hosts} "
            f"(jax.sharding, 1-D data mesh)")


def _put(tree, sharding):
    """NumPy or one-device values (the same in every process) -> arrays with `sharding`."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_callback(np.shape(a), sharding,
                                               lambda index: np.asarray(a)[index]), tree)

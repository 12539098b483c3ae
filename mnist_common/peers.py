"""What both frameworks' multi-process starts share: the environment's values checked before
anything waits, and a bounded, announced wait for the other processes.

`torch_impl/distributed.py` (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and
`flax_impl/distributed.py` (JAX_NUM_PROCESSES, JAX_PROCESS_ID, JAX_COORDINATOR_ADDRESS) read
their variables through these checks, so a value left over in a shell is one line and exit
status 2, never a silent wait. The wait itself says on stderr what it waits for and gives up
after MNIST_PEER_TIMEOUT seconds (default 120) with one line and exit status 2.
"""

import contextlib
import os
import sys
import threading
from typing import NamedTuple

from mnist_common.errors import UsageError, error_line, short_path

PEER_TIMEOUT_ENV = "MNIST_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT = 120  # seconds: a start that has not met its peers by then will not
# Exit status of a wait that gave up: the one of every other refusal.
GAVE_UP_STATUS = 2


class Start(NamedTuple):
    """A multi-process start as the environment describes it, every value checked."""

    world_size: int
    rank: int
    address: str  # host:port of the coordinator (JAX) or the rendezvous (torch)


def whole_number(name, value, low, high=None, bound_by=""):
    """The environment variable `name`'s `value` as an int in [low, high); else a UsageError
    (`bound_by` says where `high` comes from, e.g. `WORLD_SIZE=2`)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"environment variable {name}={short_path(value)} is not a whole "
                         f"number") from None
    if number < low or (high is not None and number >= high):
        upper = f", {high - 1}" if high is not None else " or more"
        bounds = f"in [{low}{upper}]" if high is not None else f"{low}{upper}"
        because = f" ({bound_by})" if bound_by else ""
        raise UsageError(f"environment variable {name}={number} is not {bounds}{because}")
    return number


def port_number(name, value):
    """A TCP port, 1..65535, from the environment variable `name`."""
    return whole_number(name, value, 1, 65536)


def host_name(name, value):
    """A host name or address: not empty, no spaces or control characters."""
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise UsageError(f"environment variable {name}={short_path(value)}: not a host name or "
                         f"address")
    return value


def host_and_port(name, value):
    """`host:port` (an IPv6 host in brackets, `[::1]:1234`) -> (host, port)."""
    host, colon, port = (value or "").rpartition(":")
    if not colon or not host:
        raise UsageError(f"environment variable {name}={short_path(value)}: not an address "
                         f"host:port (e.g. 127.0.0.1:1234)")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise UsageError(f"environment variable {name}={short_path(value)}: write an IPv6 host in "
                         f"brackets, [::1]:1234")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"environment variable {name}={short_path(value)}: its port is not a "
                         f"number in [1, 65535]")
    return host_name(name, host), int(port)


def peer_timeout():
    """Seconds a process waits for its peers: MNIST_PEER_TIMEOUT, default 120."""
    value = os.environ.get(PEER_TIMEOUT_ENV)
    if value is None or value == "":
        return DEFAULT_PEER_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 10**7:  # also refuses nan and inf
        raise UsageError(f"environment variable {PEER_TIMEOUT_ENV}={short_path(value)} is not a "
                         f"number of seconds > 0")
    return seconds


@contextlib.contextmanager
def waiting_for_peers(count, address, rank, how_to_start):
    """Announce a wait for `count` processes at `address`, then bound it.

    The frameworks wait inside native code (JAX's client aborts the process when its own
    timeout passes), so no exception can end the wait: a timer prints the one error line and
    ends the process with `os._exit` when the time is up. Nothing is written before the
    rendezvous, so there is nothing to clean up. `how_to_start` names the variables to set.
    """
    seconds = peer_timeout()
    limit = f"{seconds:g} s"
    print(f"process {rank} of {count}: waiting up to {limit} for the others at "
          f"{short_path(address)} ({PEER_TIMEOUT_ENV}=SECONDS waits longer)",
          file=sys.stderr, flush=True)

    def give_up():
        print(error_line(f"the {count} processes did not all meet at {short_path(address)} within "
                         f"{limit}: start each with {how_to_start}, or "
                         f"set {PEER_TIMEOUT_ENV}=SECONDS to wait longer"),
              file=sys.stderr, flush=True)
        os._exit(GAVE_UP_STATUS)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield seconds
    finally:
        timer.cancel()

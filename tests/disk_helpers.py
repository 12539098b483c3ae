"""The disk as tests see it: the one litter rule, and a real size-limited filesystem."""

import contextlib
import subprocess
from pathlib import Path

import pytest

from mnist_common.data import LOCK_NAME as DATA_LOCK
from mnist_common.ownership import RECORD_NAME
from mnist_common.rundir import LOCK_NAME as RUN_LOCK

KEPT = (RUN_LOCK, RECORD_NAME, DATA_LOCK)  # hidden files the project keeps at the top


def litter(directory, expected=None):
    """What writes left behind under `directory` (relative paths, sorted): every hidden path,
    which covers the temp files of atomic writes (`.NAME.*.tmp`), temp checkpoint dirs
    (`.step-*.tmp-*`), write probes (`.write-test-*`) and fetch dirs (`.fetch-*`), except a
    lock file or run record at the top, and the ownership record of any folder the project
    wrote into (`mnist_common.ownership`); and when `expected` (relative paths) is given,
    every path not in it, hidden or not."""
    directory = Path(directory)
    found = []
    for path in directory.rglob("*"):
        relative = str(path.relative_to(directory))
        if expected is not None:
            if relative not in expected:
                found.append(relative)
        elif path.name.startswith(".") and relative not in KEPT and path.name != RECORD_NAME:
            found.append(relative)
    return sorted(found)


@contextlib.contextmanager
def mounted_tmpfs(directory, size):
    """A real size-limited tmpfs at `directory` (root only); the test is skipped where
    mounting is not permitted. Unmounted afterwards."""
    directory.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(directory)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True, timeout=30)

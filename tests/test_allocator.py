"""mnist_common.allocator: after `keep_freed_memory`, a freed large block is reused, not mapped
afresh (no page fault per page on the next allocation)."""

import ctypes

import pytest
from cli_helpers import run_python

from mnist_common import allocator

# A child process allocates and touches 64 MB (above glibc's largest mmap threshold, 32 MB),
# frees it, does it again, and prints the page faults of the second time.
CHILD = """
import resource, sys
import numpy as np
from mnist_common.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
block = np.ones(16 << 20, np.float32)
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(16 << 20, np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = (64 << 20) // 4096  # 16,384 pages of 4 KB


def has_mallopt():
    try:
        ctypes.CDLL(None).mallopt  # noqa: B018 - probing for the symbol
    except (OSError, AttributeError):
        return False
    return True


def second_allocation_faults(mode):
    out = run_python("-c", CHILD, mode)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


@pytest.mark.skipif(not has_mallopt(), reason="the C library is not glibc")
def test_a_freed_block_is_reused_without_page_faults():
    fresh = second_allocation_faults("default")
    kept = second_allocation_faults("keep")
    # Premise: by default the second 64 MB block is mapped afresh (about one fault per page;
    # fewer where transparent huge pages back it).
    assert fresh >= PAGES // 600, fresh
    assert kept < fresh // 10 and kept < 200, (kept, fresh)


def test_without_mallopt_it_reports_false(monkeypatch):
    class NoMallopt:
        def __init__(self, name):
            pass

    monkeypatch.setattr(allocator.ctypes, "CDLL", NoMallopt)
    assert allocator.keep_freed_memory() is False

"""The committed results are recorded as the project's, as they are now.

A hand edit of a committed result (a citation fixed, a report's rows merged) leaves its recorded
SHA-256 stale, and the next benchmark or parity report would then refuse to replace it as a
user's file. Every file a committed record names must still be what it records.
"""

import json
from pathlib import Path

import pytest

from mnist_common.ownership import RECORD_NAME, may_replace

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ("benchmarks/results", "benchmarks/results/compile", "parity_tests/report", "docs")


@pytest.mark.parametrize("folder", COMMITTED)
def test_every_recorded_result_is_as_recorded(folder):
    record = json.loads((ROOT / folder / RECORD_NAME).read_text())
    assert record["files"], f"{folder}: the record names no file"
    stale = [name for name in record["files"] if not may_replace(ROOT / folder / name)]
    assert not stale, f"{folder}: {stale} changed since recorded; record them again"

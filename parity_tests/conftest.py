"""Shared fixtures (identical starting weights for both frameworks) and the margin table.

Every parity check records what it measured against its bound (`margins.record`); the session
ends with that table, and `--parity-report DIR` also writes it with its figures.
"""

import platform

import pytest
from margins import RECORDS, text_table, write_report
from parity_helpers import TORCH_CPU

from mnist_common.config import Config
from torch_impl import backend as torch_backend


def pytest_addoption(parser):
    parser.addoption("--parity-report", metavar="DIR", default=None,
                     help="write the parity margins as DIR/report.md, report.json and figures")


@pytest.fixture(scope="session")
def canonical_weights():
    """torch's default initialisation under seed 0, as canonical NumPy arrays."""
    state = torch_backend.create_train_state(Config(seed=0), TORCH_CPU)
    params, _ = torch_backend.state_to_arrays(state)
    return params


def _machine():
    """The CPU model and thread count, for the report."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            models = [line.split(":", 1)[1].strip() for line in cpuinfo
                      if line.startswith("model name")]
        name = models[0] if models else name
    except OSError:
        pass
    import torch

    return f"{name}, {torch.get_num_threads()} threads"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RECORDS:
        return
    terminalreporter.section("parity margins")
    for line in text_table():
        terminalreporter.write_line(line)
    directory = config.getoption("--parity-report", default=None)
    if directory:
        written = write_report(directory, _machine())
        terminalreporter.write_line(f"parity report: {', '.join(str(p) for p in written)}")

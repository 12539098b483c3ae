"""Shared fixtures (identical starting weights for both frameworks) and the margin table.

Every parity check records what it measured against its bound (`margins.check`); the session
ends with that table, and `--parity-report DIR` also writes it with its figures.
"""

import numpy as np
import pytest
from margins import RECORDS, refusal, text_table, write_report
from parity_helpers import TORCH_CPU, train_batches
from referee import mnist as referee_mnist

from benchmarks import cpu_model
from mnist_common import data
from mnist_common.config import Config
from torch_impl import backend as torch_backend


@pytest.fixture(scope="session")
def canonical_weights():
    """torch's default initialisation under seed 0, as canonical NumPy arrays."""
    state = torch_backend.create_train_state(Config(seed=0), TORCH_CPU)
    params, _ = torch_backend.state_to_arrays(state)
    return params


@pytest.fixture(scope="session")
def referee_batch(mnist_root):
    """Batch 0 of seed 0, epoch 0 at 64 images: the referee's (float64 pixels and labels, from
    its own reading) and the pipeline's (what the frameworks train on)."""
    images, labels = referee_mnist.load_split(mnist_root, train=True)
    indices = referee_mnist.batch_indices(len(labels), 0, 0, 64)[0]
    split = data.load_arrays(mnist_root, train=True)
    shared = next(train_batches(split, seed=0, epoch=0, batch_size=64))
    return referee_mnist.pixels(images[indices]), labels[indices].astype(np.int64), shared


def _machine():
    """The CPU model and thread count, for the report."""
    import torch

    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RECORDS:
        return
    terminalreporter.section("parity margins")
    for line in text_table():
        terminalreporter.write_line(line)
    directory = config.getoption("--parity-report", default=None)
    if directory:
        try:
            written = write_report(directory, _machine())
        except (OSError, ValueError) as err:  # a stranger's file there, a full disk
            terminalreporter.write_line(f"parity report not written: {err}", red=True)
            return
        terminalreporter.write_line(f"parity report: {', '.join(str(p) for p in written)}")


def pytest_configure(config):
    """Refuse a --parity-report DIR holding files a report did not write, before any test."""
    directory = config.getoption("--parity-report", default=None)
    reason = refusal(directory) if directory else None
    if reason:
        raise pytest.UsageError(reason)

"""Train the tutorial's CNN with PyTorch: `python -m torch_impl.train --help`.

A thin entry point: it parses the flags (before importing the framework, so `--help` and a bad
flag answer at once) and hands the engine, `torch_impl/backend.py`, to the shared loop.
"""

from mnist_common.allocator import keep_freed_memory
from mnist_common.config import cli_name, parse_config
from mnist_common.errors import run_cli

DESCRIPTION = "Train the tutorial's MNIST CNN with PyTorch."


def train_and_evaluate(config):
    """Train and evaluate as `config` (a `mnist_common.config.Config`) says; the metrics."""
    from mnist_common import loop
    from torch_impl import backend

    return loop.train_and_evaluate(config, backend)


def main(argv=None):
    config = parse_config("torch", DESCRIPTION, argv)
    keep_freed_memory()  # process-wide, results unchanged: mnist_common/allocator.py
    train_and_evaluate(config)


if __name__ == "__main__":
    run_cli(main, prog=cli_name("torch"))

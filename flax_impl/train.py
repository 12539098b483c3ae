"""Train the tutorial's CNN with Flax Linen and Optax: `python -m flax_impl.train --help`.

A thin entry point: it parses the flags (before importing the framework, so `--help` and a bad
flag answer at once) and hands the engine, `flax_impl/backend.py`, to the shared loop.
"""

from mnist_common.allocator import keep_freed_memory
from mnist_common.config import cli_name, parse_config
from mnist_common.errors import run_cli

DESCRIPTION = "Train the tutorial's MNIST CNN with Flax Linen and Optax."


def train_and_evaluate(config):
    """Train and evaluate as `config` (a `mnist_common.config.Config`) says; the metrics."""
    from flax_impl import backend
    from mnist_common import loop

    return loop.train_and_evaluate(config, backend)


def main(argv=None):
    config = parse_config("flax", DESCRIPTION, argv)
    keep_freed_memory()  # process-wide, results unchanged: mnist_common/allocator.py
    train_and_evaluate(config)


if __name__ == "__main__":
    run_cli(main, prog=cli_name("flax"))

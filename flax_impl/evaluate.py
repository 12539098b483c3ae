"""Evaluate canonical weights with Flax: `python -m flax_impl.evaluate --weights F`."""

from mnist_common.config import program
from mnist_common.errors import run_cli
from mnist_common.evaluation import evaluate_weights


def main(argv=None):
    return evaluate_weights("flax", argv)


if __name__ == "__main__":
    run_cli(main, prog=program("flax", "evaluate"))

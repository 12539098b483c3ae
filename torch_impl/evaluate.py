"""Evaluate canonical weights with PyTorch: `python -m torch_impl.evaluate --weights F`."""

from mnist_common.config import program
from mnist_common.errors import run_cli
from mnist_common.evaluation import evaluate_weights


def main(argv=None):
    return evaluate_weights("torch", argv)


if __name__ == "__main__":
    run_cli(main, prog=program("torch", "evaluate"))

"""Evaluate canonical weights with PyTorch: `python -m torch_impl.evaluate --weights F`.

A thin entry point: it parses the flags (before importing the framework, so `--help` and a bad
flag answer at once) and hands the engine, `torch_impl/backend.py`, to the shared evaluation.
"""

from mnist_common.config import cli_name
from mnist_common.errors import run_cli
from mnist_common.evaluation import evaluate_weights, parse_args


def main(argv=None):
    args = parse_args("torch", argv)
    from torch_impl import backend

    return evaluate_weights(args, backend)


if __name__ == "__main__":
    run_cli(main, prog=cli_name("torch", "evaluate"))

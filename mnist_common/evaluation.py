"""The evaluation CLI both frameworks share: canonical weights in, test metrics out."""

import argparse
import os
from pathlib import Path

from mnist_common import data, loaders, reporting
from mnist_common.config import DEVICES, LOADERS
from mnist_common.errors import ArgumentParser, UsageError
from mnist_common.weights import load_weights


def build_parser(framework):
    """Flags of `python -m <framework>_impl.evaluate`."""
    parser = ArgumentParser(
        prog=f"python -m {framework}_impl.evaluate",
        description=f"Evaluate canonical weights (.safetensors from either framework, or the "
                    f"tutorial's .pt state_dict) with {framework} on all 10,000 test images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--weights", required=True, metavar="FILE",
                        help="model.safetensors or a .pt/.pth state_dict")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to evaluate")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="MNIST root (default: $MNIST_DATA_DIR, else a per-user cache dir)")
    parser.add_argument("--loader", choices=LOADERS, default="memory", help="test-set loader")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="also write the metrics to this JSON file")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no status lines while preparing data")
    return parser


def _check_out_path(out):
    """Fail before evaluating if --out cannot be written (the write itself is atomic)."""
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"--out {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: directory {parent} is not writable")


def evaluate_weights(framework, argv, load_model):
    """Parse flags, load weights with `load_model(params, device_flag) -> (hooks, state)`, evaluate.

    Returns the metrics dict (also printed, and written to --out when given).
    """
    args = build_parser(framework).parse_args(argv)
    if args.out:
        _check_out_path(args.out)
    params = load_weights(args.weights)
    hooks, state = load_model(params, args.device)
    root = data.prepare_data(args.data_dir, progress=args.progress)
    test_split = data.load_arrays(root, train=False)
    batches = loaders.eval_batches(test_split, loader=args.loader, root=root)
    evaluation = hooks.evaluate(state, (hooks.to_batch(x, y) for x, y in batches))
    metrics = {
        "framework": framework,
        "weights": str(args.weights),
        "device": hooks.device,
        "versions": hooks.versions,
        "test_loss": evaluation["loss"],
        "test_accuracy": evaluation["accuracy"],
        "test_correct": evaluation["correct"],
        "test_examples": evaluation["examples"],
    }
    print(f"{framework}: {args.weights}: test accuracy {100 * evaluation['accuracy']:.2f} % "
          f"({evaluation['correct']}/{evaluation['examples']}), test loss {evaluation['loss']:.4f}")
    if args.out:
        try:
            reporting.write_metrics(args.out, metrics)
        except OSError as err:
            raise UsageError(f"--out {args.out}: cannot write it ({err.strerror or err})") from None
    return metrics

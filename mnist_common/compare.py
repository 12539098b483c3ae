"""Side-by-side summary of two training runs: `python -m mnist_common.compare DIR DIR`."""

import argparse
import json
from pathlib import Path

from mnist_common.errors import UsageError, run_cli


def read_metrics(run_dir):
    """metrics.json of one run directory."""
    path = Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file (train first)") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None


def format_table(runs):
    """A Markdown table: one row per run."""
    lines = ["| framework | device | test accuracy | test loss | train seconds | images/s |",
             "|---|---|---:|---:|---:|---:|"]
    for m in runs:
        lines.append(f"| {m['framework']} | {m['device']} | {100 * m['test_accuracy']:.2f} % "
                     f"| {m['test_loss']:.4f} | {m['train_seconds']:.1f} "
                     f"| {m['train_images_per_second']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mnist_common.compare",
                                     description="Print the runs' metrics side by side.")
    parser.add_argument("run_dirs", nargs="+", metavar="DIR", help="--out-dir of a training run")
    args = parser.parse_args(argv)
    print(format_table([read_metrics(d) for d in args.run_dirs]))


if __name__ == "__main__":
    run_cli(main, prog="python -m mnist_common.compare")

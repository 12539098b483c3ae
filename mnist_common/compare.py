"""Side-by-side summary of training runs: `python -m mnist_common.compare DIR DIR ...`.

Prints a Markdown table of the runs' metrics and writes one figure, both runs' training-loss
curves and per-epoch test accuracy overlaid: for a project whose point is "the same model",
the picture shows it at a glance.
"""

import json
from pathlib import Path

from mnist_common.errors import ArgumentParser, UsageError, escaped, run_cli
from mnist_common.fileio import check_path
from mnist_common.ownership import may_replace, owned_path

PROG = "python -m mnist_common.compare"
FIGURE_SOFTWARE = "mnist-cnn-parity compare"  # the PNG's Software text: who drew it


def read_metrics(run_dir):
    """metrics.json of one run directory, checked to be a finished training run's record."""
    path = Path(run_dir) / "metrics.json"
    check_path(path, "DIR")
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file (train first)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read it ({getattr(err, 'strerror', None) or err})"
                         ) from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None
    if not _readable_run(metrics):
        raise UsageError(f"{path}: not the metrics.json of a training run of this project")
    return metrics


def _readable_run(metrics):
    """Whether `metrics` has what the table and the figure read, with the right types."""
    if not isinstance(metrics, dict):
        return False
    numbers = ("test_accuracy", "test_loss", "train_seconds", "train_images_per_second")
    if not all(isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool)
               for k in numbers):
        return False
    epochs = metrics.get("epochs")
    return (isinstance(metrics.get("framework"), str) and isinstance(metrics.get("device"), str)
            and isinstance(metrics.get("step_losses"), list)
            and all(isinstance(x, (int, float)) for x in metrics["step_losses"])
            and isinstance(epochs, list)
            and all(isinstance(e, dict) and isinstance(e.get("epoch"), int)
                    and isinstance(e.get("test_accuracy"), (int, float)) for e in epochs))


def format_table(runs):
    """A Markdown table: one row per run."""
    lines = ["| framework | device | test accuracy | test loss | train seconds | images/s |",
             "|---|---|---:|---:|---:|---:|"]
    for m in runs:
        lines.append(f"| {m['framework']} | {m['device']} | {100 * m['test_accuracy']:.2f} % "
                     f"| {m['test_loss']:.4f} | {m['train_seconds']:.1f} "
                     f"| {m['train_images_per_second']:.0f} |")
    return "\n".join(lines)


def plot_runs(runs, path):
    """Training loss per step (left) and test accuracy per epoch (right), every run overlaid."""
    from mnist_common.plotting import pyplot

    plt = pyplot()
    import numpy as np

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for m in runs:
        label = f"{m['framework']} ({m['device']})"
        losses = np.asarray(m["step_losses"], dtype=np.float64)
        loss_ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.7, alpha=0.8, label=label)
        epochs = [e for e in m["epochs"] if not e.get("partial")]
        acc_ax.plot([e["epoch"] for e in epochs], [100 * e["test_accuracy"] for e in epochs],
                    "o-", label=f"{label}: {100 * m['test_accuracy']:.2f} %")
    loss_ax.set(yscale="log", xlabel="step", ylabel="training loss (cross-entropy)",
                title="training loss, per step")
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy, per epoch")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with owned_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": FIGURE_SOFTWARE})
    plt.close(fig)


def main(argv=None):
    parser = ArgumentParser(prog=PROG, description="Print the runs' metrics side by side and "
                                                   "plot their loss and accuracy curves.")
    parser.add_argument("run_dirs", nargs="+", metavar="DIR", help="--out-dir of a training run")
    parser.add_argument("--plot", metavar="FILE", default=None,
                        help="where the figure goes (default: compare.png in the parent of the "
                             "first DIR, e.g. runs/compare.png)")
    args = parser.parse_args(argv)
    runs = [read_metrics(d) for d in args.run_dirs]
    plot = Path(args.plot) if args.plot else Path(args.run_dirs[0]).resolve().parent / "compare.png"
    check_path(plot, "--plot")
    if not may_replace(plot):
        raise UsageError(f"--plot {plot}: exists and is not a figure compare wrote; choose "
                         f"another --plot (only such figures are replaced)")
    print(format_table(runs))
    try:
        plot_runs(runs, plot)
    except OSError as err:
        raise UsageError(f"--plot {plot}: cannot write it ({err.strerror or err})") from None
    print(f"figure: {escaped(plot)}")


if __name__ == "__main__":
    run_cli(main, prog=PROG)

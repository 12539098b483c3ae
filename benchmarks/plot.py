"""The results as a figure: training and inference images/s per batch size and variant."""

import numpy as np

from benchmarks.report import section_ok
from mnist_common.fileio import atomic_path


def _bars(ax, results, key, names, width):
    """One group of bars per batch size, one bar per variant (min–max as error bars)."""
    batches = list(results[key])
    for i, name in enumerate(names):
        medians, low, high = [], [], []
        for batch in batches:
            stats = results[key][batch].get(name, {}).get("images_per_second")
            medians.append(stats["median"] if stats else np.nan)
            low.append(stats["median"] - stats["min"] if stats else 0)
            high.append(stats["max"] - stats["median"] if stats else 0)
        xs = np.arange(len(batches)) + (i - (len(names) - 1) / 2) * width
        ax.bar(xs, medians, width, yerr=[low, high], capsize=2, label=name)
    ax.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches])


def plot(results, path):
    """Bar charts of training and inference images/s per batch size, written atomically to
    `path` (an ImportError without Matplotlib)."""
    from mnist_common.plotting import pyplot

    plt = pyplot()

    names = [n for n, v in results.get("variants", {}).items() if v["status"] == "ok"]
    sections = [(key, title) for key, title in (("train", "training step"),
                                                ("inference", "inference (logits)"))
                if section_ok(results, key)]
    fig, axes = plt.subplots(1, max(len(sections), 1), figsize=(12, 4.5), dpi=100, squeeze=False)
    for ax, (key, title) in zip(axes[0], sections, strict=False):
        _bars(ax, results, key, names, 0.8 / max(len(names), 1))
        ax.set_yscale("log")
        ax.set_ylabel("images / s (median, min–max)")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"MNIST CNN, {results['device_name']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)

"""A run's outputs, the same for both sides: progress bars, metrics.json, loss.png,
model.safetensors and the one-line summary."""

import dataclasses
import json
import platform
import sys

import numpy as np
from tqdm.auto import tqdm

from mnist_common.ownership import owned_path, write_owned
from mnist_common.weights import save_weights

OUTPUTS = ("model.safetensors", "metrics.json", "loss.png")  # what a run writes in --out-dir


def progress_bar(iterable, *, total, desc, enabled, leave=False):
    """A tqdm bar on stderr, shown only when asked for and stderr is a terminal."""
    disable = not enabled or not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, leave=leave, disable=disable, unit="step",
                dynamic_ncols=True)


def write_metrics(path, metrics):
    """Write metrics as indented JSON, atomically, as the project's (`mnist_common.ownership`)."""
    write_owned(path, json.dumps(metrics, indent=2) + "\n")


def plot_losses(path, metrics):
    """Training loss per step and test loss per epoch, one PNG."""
    from mnist_common.plotting import pyplot

    plt = pyplot()

    step_losses = np.asarray(metrics["step_losses"], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(np.arange(1, len(step_losses) + 1), step_losses, lw=0.8, label="train loss (per step)")
    epochs = metrics["epochs"]
    if epochs:
        ax.plot([e["step"] for e in epochs], [e["test_loss"] for e in epochs], "o-",
                label="test loss (end of epoch)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(f"{metrics['framework']}: test accuracy {100 * metrics['test_accuracy']:.2f} %")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with owned_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def summary_line(metrics):
    """One line a person reads at the end of a run."""
    return (f"{metrics['framework']}: test accuracy {100 * metrics['test_accuracy']:.2f} % "
            f"({metrics['test_correct']}/{metrics['test_examples']}), "
            f"test loss {metrics['test_loss']:.4f}, {metrics['steps']} steps in "
            f"{metrics['train_seconds']:.1f} s ({metrics['train_images_per_second']:.0f} images/s) "
            f"on {metrics['device']}")


def build_metrics(config, framework, versions, device, progress, records, images_seen,
                  first_call_seconds, memory_format):
    """metrics.json's content: what ran where, per-epoch records, final test figures.

    `first_call_seconds`: this process's first dispatch (compile and its steps); None when it
    trained nothing. `memory_format`: how the model stored images and activations (NCHW,
    channels_last, NHWC)."""
    final = records[-1]
    return {
        "framework": framework,
        "versions": {**versions, "python": platform.python_version(), "numpy": np.__version__},
        "device": device,
        "precision": config.precision,
        "memory_format": memory_format,
        "config": dataclasses.asdict(config),
        "steps": progress["global_step"],
        "epochs": records,
        "test_loss": final["test_loss"],
        "test_accuracy": final["test_accuracy"],
        "test_correct": final["test_correct"],
        "test_examples": final["test_examples"],
        "train_seconds": progress["train_seconds"],
        "train_images_per_second": images_seen / max(progress["train_seconds"], 1e-9),
        "first_call_seconds": first_call_seconds,
        "step_losses": progress["step_losses"],
    }


def write_outputs(out_dir, params, metrics):
    """model.safetensors, loss.png, then metrics.json (the run's summary goes last); each file
    is replaced atomically and recorded as the project's (`mnist_common.ownership`) before it
    lands. A failed write (a full disk) raises OSError."""
    save_weights(out_dir / "model.safetensors", params)
    plot_losses(out_dir / "loss.png", metrics)
    write_metrics(out_dir / "metrics.json", metrics)

"""The parity report's figures (matplotlib, Agg): drawn from what the checks recorded."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
import numpy as np  # noqa: E402


def draw_all(out, records, series):
    """Every figure whose data was recorded; returns the paths written."""
    written = []
    if "trajectory" in series:
        written.append(trajectory_figure(out / "trajectory.png", series["trajectory"],
                                         [r for r in records if r["group"] == "trajectory"]))
    referee = [r for r in records if r["group"] == "referee"]
    if referee:
        written.append(referee_figure(out / "referee.png", referee))
    return written


def trajectory_figure(path, gaps, records):
    """|dw| quantiles at step 100: Flax vs torch beside the four torch-vs-torch variations."""
    names = list(gaps)
    quantiles = {"median": 0.5, "90th percentile": 0.9}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, (label, q) in zip(axes, quantiles.items(), strict=True):
        values = [np.quantile(gaps[n], q) for n in names]
        colors = ["tab:orange" if n.startswith("flax") else "tab:blue" for n in names]
        ax.barh(names, values, color=colors)
        bound = [r["bound"] for r in records if r.get("statistic") == label]
        if bound:
            ax.axvline(bound[0], color="red", linestyle="--", label=f"bound {bound[0]:.2g}")
            ax.legend(loc="lower right")
        ax.set_xlabel(f"{label} of |w - w_torch| over 123,222 weights, step 100")
        ax.invert_yaxis()
    fig.suptitle("100 steps from identical weights: the Flax-torch weight gap (orange) beside "
                 "torch against itself (blue)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def referee_figure(path, records):
    """Each framework's largest error against the referee per layer, as a fraction of its
    float32 bound, and in absolute terms."""
    layers = list(dict.fromkeys(r["layer"] for r in records))
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.32 * len(layers) + 1.8), sharey=True,
                             constrained_layout=True)
    y = np.arange(len(layers))
    for offset, (framework, color) in zip((-0.2, 0.2), (("torch", "tab:blue"),
                                                        ("flax", "tab:orange")), strict=True):
        by_layer = {r["layer"]: r for r in records if r["framework"] == framework}
        ratio = [max(by_layer[layer]["measured"], 1e-6) if layer in by_layer else np.nan
                 for layer in layers]
        error = [max(by_layer[layer]["error_at_worst"], 1e-20) if layer in by_layer else np.nan
                 for layer in layers]
        axes[0].barh(y + offset, ratio, height=0.4, color=color, label=framework)
        axes[1].barh(y + offset, error, height=0.4, color=color, label=framework)
    axes[0].axvline(1.0, color="red", linestyle="--", label="bound")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("largest |framework - referee| / its float32 bound (1 = the bound)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("|framework - referee| where that ratio is largest")
    axes[0].set_yticks(y, layers)
    axes[0].invert_yaxis()
    axes[0].legend(loc="lower right")
    fig.suptitle("Each framework against the float64 referee, per layer")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

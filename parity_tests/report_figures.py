"""The parity report's figures (matplotlib, Agg): drawn from what the checks recorded."""

import numpy as np

from mnist_common.ownership import owned_path
from mnist_common.plotting import pyplot

plt = pyplot()


def save(fig, path):
    """The figure as a PNG at `path`, written whole or not at all."""
    with owned_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


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


def trajectory_figure(path, quantiles, records):
    """|dw| at step 100: Flax vs torch beside the four torch-vs-torch variations; the
    percentile curves, and the median and 90th percentile against their bounds."""
    names = list(quantiles)
    torch_colors = iter(["tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray"])
    colors = {n: "tab:orange" if n.startswith("flax") else next(torch_colors) for n in names}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), constrained_layout=True,
                             gridspec_kw={"width_ratios": [1.3, 1, 1]})
    percent = np.linspace(0, 100, 101)
    for name in names:
        flax = name.startswith("flax")
        axes[0].plot(percent[1:], quantiles[name][1:], label=name, color=colors[name],
                     linewidth=2.5 if flax else 1.2)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("percentile over the 123,222 weights")
    axes[0].set_ylabel("|w - w_torch| at step 100")
    axes[0].legend(fontsize=8)
    for ax, (label, index) in zip(axes[1:], (("median", 50), ("90th percentile", 90)),
                                  strict=True):
        values = [quantiles[n][index] for n in names]
        ax.barh(names, values, color=["tab:orange" if n.startswith("flax") else "tab:blue"
                                      for n in names])
        bound = [r["bound"] for r in records if r.get("statistic") == label]
        if bound:
            ax.axvline(bound[0], color="red", linestyle="--", label=f"bound {bound[0]:.2g}")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(f"{label} of |w - w_torch|")
        ax.invert_yaxis()
    axes[2].set_yticks([])
    fig.suptitle("100 steps from identical weights: the Flax-torch weight gap (orange) beside "
                 "torch against itself (blue: four float32 variations)")
    save(fig, path)
    return path


def referee_figure(path, records):
    """Each framework's largest error against the referee per layer, as a fraction of its
    float32 bound (an exact 0 is drawn at 1e-15), and that element's error itself."""
    layers = list(dict.fromkeys(r["layer"] for r in records))
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.32 * len(layers) + 1.8), sharey=True,
                             constrained_layout=True)
    y = np.arange(len(layers))
    for offset, (framework, color) in zip((-0.2, 0.2), (("torch", "tab:blue"),
                                                        ("flax", "tab:orange")), strict=True):
        by_layer = {r["layer"]: r for r in records if r["framework"] == framework}
        ratio = [max(by_layer[layer]["measured"], 1e-15) if layer in by_layer else np.nan
                 for layer in layers]
        error = [max(by_layer[layer]["error_at_worst"], 1e-20) if layer in by_layer else np.nan
                 for layer in layers]
        axes[0].barh(y + offset, ratio, height=0.4, color=color, label=framework)
        axes[1].barh(y + offset, error, height=0.4, color=color, label=framework)
    axes[0].axvline(1.0, color="red", linestyle="--", label="bound")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("largest |framework - referee| / its float32 bound (1 = the bound)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("|framework - referee| at the element nearest its bound")
    axes[0].set_yticks(y, layers)
    axes[0].invert_yaxis()
    axes[0].legend(loc="lower right")
    fig.suptitle("Each framework against the float64 referee, per layer")
    save(fig, path)
    return path

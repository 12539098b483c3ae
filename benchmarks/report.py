"""The results as Markdown (throughput with ratios, first calls, layers, end to end, memory) and
as a figure (training and inference images/s per batch size and variant)."""

import numpy as np

from benchmarks import BASELINE, TARGET_ACCURACY
from benchmarks.harness import windows_load
from mnist_common.ownership import owned_path

BUSY_WARNING = 0.05  # other processes above this share of the CPUs: the figure is suspect
THROUGHPUT = (("train", "Training step (forward, loss, backward, Adam)", "training step"),
              ("inference", "Inference (logits)", "inference (logits)"))  # key, heading, plot


def fmt(value, spec, missing="—"):
    """`value` formatted by `spec`, or `missing` when there is none."""
    return missing if value is None else format(value, spec)


def fmt_rate(stats):
    return f"{stats['median']:,.0f} ({stats['min']:,.0f}–{stats['max']:,.0f})"


def fmt_ms(stats):
    return "failed" if "error" in stats else (
        f"{stats['median']:.3g} ({stats['min']:.3g}–{stats['max']:.3g})")


def fmt_share(value):
    return "n/a" if value is None else f"{100 * value:.0f} %"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def ran(results):
    """The variants that ran, in the order of the results."""
    return [name for name, v in results.get("variants", {}).items() if v["status"] == "ok"]


def section_ok(results, key):
    """True when a section was measured (it is there, and neither skipped nor failed)."""
    section = results.get(key)
    return bool(section) and isinstance(section, dict) and not {"error", "skipped"} & set(section)


def throughput_table(section, names):
    """Rows: variant; per batch: images/s median (min–max) and the ratio to the baseline."""
    header, rows = ["variant"], []
    for batch in section:
        header += [f"batch {batch} images/s", f"× {BASELINE}"]
    for name in names:
        row = [name]
        for entries in section.values():
            rate, base = (entries.get(n, {}).get("images_per_second") for n in (name, BASELINE))
            if rate is None:
                row += ["failed" if name in entries else "—", ""]
            else:
                row += [fmt_rate(rate), f"{rate['median'] / base['median']:.2f}×" if base else ""]
        rows.append(row)
    return table(header, rows)


def other_loads(value):
    """Every other-process CPU share recorded anywhere in `value` (the results)."""
    if isinstance(value, list):
        return [load for child in value for load in other_loads(child)]
    if not isinstance(value, dict):
        return []
    own = [value["other_load"]] if isinstance(value.get("other_load"), (int, float)) else []
    return own + windows_load([value]) + other_loads(list(value.values()))


def title_lines(results):
    """Title, machine, versions, load, precision and the method."""
    env, versions = results["environment"], results["environment"]["versions"]
    machine = f"{env['cpu_model']}, {env['cpu_count']} cores, torch threads " \
              f"{env['torch_num_threads']}"
    precision = f"Precision: `--precision {results.get('precision', 'highest')}`"
    if results["device"] == "cpu":
        precision += " (a CPU computes float32 either way)."
    else:
        driver = f", driver {env['nvidia_driver']}" if env.get("nvidia_driver") else ""
        machine += f"; GPU {env.get('gpu_name')}{driver}, CUDA {env.get('torch_cuda')}"
        precision += (f", set through the engines' `select_placement`: torch matmul TF32 "
                      f"{env.get('torch_matmul_allow_tf32')}, cuDNN conv TF32 "
                      f"{env.get('torch_cudnn_allow_tf32')}; JAX default matmul precision "
                      f"{env.get('jax_default_matmul_precision')}.")
    load = "Load average at start {}, at end {}".format(*(
        "/".join(f"{x:.2f}" for x in env[key]) if env.get(key) else "n/a"
        for key in ("load_average", "load_average_end")))
    if "process_cpu_seconds" in env:
        load += (f"; this process got {env['process_cpu_seconds']:.0f} CPU-seconds in "
                 f"{results['wall_seconds']:.0f} s of wall time")
    return [f"# MNIST CNN benchmark: {results['device_name']}", "",
            f"{results['created']}, `{results['command']}`. torch {versions.get('torch')}, "
            f"jax {versions.get('jax')}, flax {versions.get('flax')}, optax "
            f"{versions.get('optax')}; {machine}. {load}.", "",
            f"Median over {results['method']['repeats']} interleaved windows (min–max in "
            f"brackets); first calls (compile/jit) excluded and listed below. × {BASELINE} = "
            f"variant median / {BASELINE} median.", "", precision, ""]


def header_lines(results):
    """Title, precision, the peak GEMM, a busy-machine warning and the variants."""
    lines, gemm = title_lines(results), results.get("peak_gemm", {})
    rates = [f"{name} {fmt_rate(gemm[name]['gflop_per_second'])} GFLOP/s"
             for name in ("torch", "jax") if "gflop_per_second" in gemm.get(name, {})]
    if rates:
        others = max(windows_load(v for v in gemm.values() if isinstance(v, dict)), default=None)
        lines += [f"**Peak float32 GEMM** ({gemm['size']}³): " + "; ".join(rates)
                  + f" (others' CPU up to {fmt_share(others)}). % of peak below refers to "
                  f"torch's.", ""]
    busiest = max(other_loads(results), default=None)
    if results["device"] == "cpu" and busiest is not None and busiest > BUSY_WARNING:
        lines += [f"**Warning: other processes used up to {fmt_share(busiest)} of the CPUs during "
                  f"some measurements (listed with each table). torch's OpenMP threads slow down "
                  f"many times over when they must share cores; XLA's thread pool much less. "
                  f"Figures measured while the machine was busy are not representative.**", ""]
    lines += [f"- `{name}`: {v.get('description', '')}"
              f"{'' if v['status'] == 'ok' else ' — not run: ' + v['reason']}."
              for name, v in results.get("variants", {}).items()]
    return lines + [""]


def gflops_cell(entry):
    """`12.3 (45.6 %)` for one training entry."""
    if "error" in entry or entry.get("percent_of_peak") is None:
        return "failed" if "error" in entry else "—"
    return f"{entry['gflop_per_second']['median']:.1f} ({entry['percent_of_peak']:.1f} %)"


def throughput_lines(results, names):
    """Images/s with ratios of the train step and of logits; training GFLOP/s; the latency."""
    lines = []
    for key, heading, _ in THROUGHPUT:
        if not section_ok(results, key):
            continue
        section = results[key]
        lines += [f"## {heading}, images/s", "", throughput_table(section, names), ""]
        if key == "train":
            flops = results["flops"]
            rows = [[name] + [gflops_cell(e.get(name, {})) for e in section.values()]
                    for name in names]
            lines += [f"Achieved GFLOP/s (% of peak GEMM). {flops['convention']}: "
                      f"{flops['train_per_image'] / 1e6:.1f} MFLOP per training image.", "",
                      table(["variant"] + [f"batch {b}" for b in section], rows), ""]
        loads = ", ".join(f"batch {batch} {fmt_share(max(windows_load(e.values()), default=None))}"
                          for batch, e in section.items())  # the largest of each batch size
        lines += [f"Other processes' largest share of the CPUs during a timed window: {loads}.", ""]
    if results.get("latency_ms"):
        lines += ["Single-image latency, ms: " + "; ".join(
            f"{n} {fmt_ms(s)}" for n, s in results["latency_ms"].items()) + ".", ""]
    return lines


def first_call_table(results, names):
    """First-call seconds (compile / jit / autotune) of every timed step."""
    columns = {f"{label} {batch}": entries
               for key, label in (("train", "train"), ("inference", "infer"))
               if section_ok(results, key) for batch, entries in results[key].items()}
    rows = [[name] + [f"{c[name]['first_call_seconds']:.2f}" if "first_call_seconds"
                      in c.get(name, {}) else c.get(name, {}).get("error", "—")
                      for c in columns.values()] for name in names]
    return ["## First call, seconds (compile / jit / autotune; not in the figures above)", "",
            table(["variant", *columns], rows), ""] if columns else []


def layers_table(layers):
    """Per-layer forward and forward+backward ms, torch vs Flax (vs XLA's defaults)."""
    impls = list(dict.fromkeys(impl for row in layers["rows"] for impl in row["forward_ms"]))
    header = (["layer", "input (C,H,W)"] + [f"{i} fwd ms" for i in impls]
              + [f"{i} fwd+bwd ms" for i in impls] + ["flax/torch fwd+bwd", "others' CPU"])
    rows = []
    for row in layers["rows"]:
        cells = [f"{row['layer']} {row['kind']}", "×".join(map(str, row["input_shape"]))]
        for key in ("forward_ms", "forward_backward_ms"):
            cells += [fmt_ms(row[key][i]) if i in row[key] else "—" for i in impls]
        both = row["forward_backward_ms"]
        ok = "median" in both.get("flax", {}) and "median" in both.get("torch", {})
        rows.append(cells + [f"{both['flax']['median'] / both['torch']['median']:.2f}" if ok
                             else "", fmt_share(row.get("other_load"))])
    return [f"## Layers alone, batch {layers['batch_size']}, ms (median, min–max)", "",
            "flax = jitted as the Flax engine jits (`flax_impl.xla_cpu.jit` on the CPU); "
            "xla-default = a plain `jax.jit` (listed only where the two differ). "
            f"{layers['note']}.", "", table(header, rows), ""]


def end_to_end_lines(e2e):
    """One epoch through the CLIs' loop, beside the isolated step at the same batch size."""
    rows = [[framework, e["variant"], e["steps"], f"{e['train_seconds']:.1f}",
             f"{e['train_images_per_second']:,.0f}",
             fmt(e.get("isolated_step_images_per_second"), ",.0f"),
             fmt(e.get("end_to_end_vs_isolated"), ".2f", ""),
             f"{100 * e['test_accuracy']:.2f} %", fmt_share(e.get("other_load"))]
            for framework, e in e2e.items()]
    return ["## End to end: one real MNIST epoch through the CLIs' loop"
            if all(e["complete_epoch"] for e in e2e.values())
            else "## End to end: real MNIST, the first steps of epoch 1 (--quick)", "",
            "The CLIs' loop (`mnist_common.loop`) with the engine, as `python -m "
            "<framework>_impl.train --epochs 1` runs it (in-memory loader, batch 256, the loss "
            "read every step; compile included, evaluation not), beside the isolated step.", "",
            table(["framework", "variant", "steps", "train seconds", "images/s",
                   "isolated step images/s", "end to end / isolated", "test accuracy after",
                   "others' CPU"], rows), ""]


def time_to_accuracy_lines(tta):
    """Per variant: seconds and epochs until the target accuracy, the first dispatch."""
    rows = [[name, f"{t['seconds_to_target']:.1f}" if t["reached"] else "not reached",
             t["epochs_to_target"] or f"> {t['max_epochs']}",
             f"{100 * t['epochs'][-1]['test_accuracy']:.2f} %",
             fmt(t.get("first_call_seconds"), ".1f"),
             fmt_share(t.get("other_load"))] for name, t in tta.items()]
    return [f"## Time to {100 * TARGET_ACCURACY:.1f} % test accuracy (the CLIs' loop stopped at "
            f"the first epoch that reaches it, tutorial settings, data on the device; compile "
            f"included, evaluation not timed)", "",
            table(["variant", "training seconds", "epochs", "last accuracy",
                   "first dispatch s (included)", "others' CPU"], rows), ""]


def cli_lines(cli):
    """The training CLIs as fresh processes: training seconds, process seconds, accuracy."""
    rows = []
    for framework, runs in cli.items():
        for precision, run in runs.items():
            if "error" in run:
                rows.append([framework, precision, f"failed: {run['error']}", "", "", "", ""])
                continue
            seconds = run["ten_epoch_train_seconds"]
            rows.append([framework, precision, run["steps"],
                         f"{seconds:.1f}" if seconds is not None
                         else f"({run['train_seconds']:.1f}, not 10 epochs)",
                         f"{run['process_seconds']:.1f}",
                         fmt(run["first_call_seconds"], ".2f"),
                         f"{100 * run['test_accuracy']:.2f} %"])
    return ["## The training CLIs, fresh processes (`python -m <framework>_impl.train`)", "",
            table(["framework", "precision", "steps", "10-epoch training s", "process s",
                   "first call s", "test accuracy"], rows), ""]


def memory_lines(results):
    """Peak host RSS, and per framework the peak device memory of each training batch size."""
    if not results.get("memory"):
        return []
    rows = []
    for batch, entries in (results["train"] if section_ok(results, "train") else {}).items():
        snapshot = next((e["memory"] for e in entries.values() if "memory" in e), {})
        cells = [snapshot.get(k) for k in ("torch_device_peak_bytes", "jax_device_peak_bytes")]
        if any(c is not None for c in cells):
            rows.append([batch] + [fmt(c and c / 2**20, ",.0f") for c in cells])
    lines = ["## Memory", "", f"Peak host RSS of the whole run: "
             f"{results['memory']['host_peak_rss_bytes'] / 2**20:,.0f} MiB.", ""]
    return lines + (["Device memory after training at each batch size, MiB (torch: peak "
                     "allocated over its variants together; JAX: peak in use since start):", "",
                     table(["batch", "torch peak", "JAX peak"], rows), ""] if rows else [])


def not_run_lines(results):
    """Each section that was not run, and why; each that failed, with its message (a variant
    that failed has its message in the first-call table)."""
    notes = [f"- {key}: not run: {v['skipped']}" if "skipped" in v else f"- {key}: failed: "
             f"{v['error']}" for key, v in results.items()
             if isinstance(v, dict) and {"skipped", "error"} & set(v)]
    return ["## Not run or failed", "", *notes, ""] if notes else []


def markdown(results):
    """The whole report of one device."""
    names = ran(results)
    parts = header_lines(results) + throughput_lines(results, names)
    parts += first_call_table(results, names)
    for key, section_lines in (("layers", layers_table), ("end_to_end", end_to_end_lines),
                               ("cli", cli_lines), ("time_to_accuracy", time_to_accuracy_lines)):
        if section_ok(results, key):
            parts += section_lines(results[key])
    parts += memory_lines(results) + not_run_lines(results)
    if not results.get("complete"):
        parts.append("**Interrupted: these are the sections finished before the stop.**")
    parts.append(f"Whole run on this device: {results.get('wall_seconds', 0):.0f} s.")
    return "\n".join(parts) + "\n"


def scaling_markdown(results):
    """The table of `run.py scaling`: images/s on 1 and N processes / devices."""
    one = {r["framework"]: r["images_per_second"] for r in results["rows"]
           if r["count"] == results["counts"][0]}
    rows = [[r["framework"], r["count"], f"{r['images_per_second']:,.0f}",
             f"{r['images_per_second'] / one[r['framework']]:.2f}", f"{r['final_loss']:.4f}",
             r["device"]] for r in results["rows"]]
    return "\n".join([
        f"# Data-parallel scaling ({results['device']}), measured {results['date']}", "",
        f"`python {results['command']}`: {results['steps']} steps at global batch 256 on real "
        "MNIST, the CLIs' own images/s.", "",
        table(["framework", "processes / devices", "images/s", "× one", "last step's loss",
               "device"], rows)]) + "\n"


def _bars(ax, results, key, names, width):
    """One group of bars per batch size, one bar per variant (min–max as error bars)."""
    batches = list(results[key])
    for i, name in enumerate(names):
        stats = [results[key][b].get(name, {}).get("images_per_second") or {} for b in batches]
        medians = np.array([s.get("median", np.nan) for s in stats])
        errors = [medians - [s.get("min", np.nan) for s in stats],
                  [s.get("max", np.nan) for s in stats] - medians]
        xs = np.arange(len(batches)) + (i - (len(names) - 1) / 2) * width
        ax.bar(xs, medians, width, yerr=np.nan_to_num(errors), capsize=2, label=name)
    ax.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches])


def plot(results, path):
    """Bar charts of training and inference images/s per batch size, atomically to `path`."""
    from mnist_common.plotting import pyplot

    plt, names = pyplot(), ran(results)
    sections = [(key, title) for key, _, title in THROUGHPUT if section_ok(results, key)]
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
    with owned_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)

"""The results as Markdown: throughput with ratios, first calls, layers, end to end, memory."""

from benchmarks.timing import fmt_share, windows_load
from benchmarks.training import TARGET_ACCURACY
from benchmarks.variants import BASELINE

BUSY_WARNING = 0.05  # other processes above this share of the CPUs: the figure is suspect


def fmt_rate(stats):
    return f"{stats['median']:,.0f} ({stats['min']:,.0f}–{stats['max']:,.0f})"


def fmt_ms(stats):
    if "error" in stats:
        return "failed"
    return f"{stats['median']:.3g} ({stats['min']:.3g}–{stats['max']:.3g})"


def fmt_load(load):
    return "/".join(f"{x:.2f}" for x in load) if load else "n/a"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(section, batch, name, key="images_per_second"):
    """variant median / baseline median, or '' when either is missing."""
    entry, base = section.get(batch, {}).get(name, {}), section.get(batch, {}).get(BASELINE, {})
    if key not in entry or key not in base:
        return ""
    return f"{entry[key]['median'] / base[key]['median']:.2f}×"


def section_ok(results, key):
    """True when a measured section is present and did not fail."""
    return isinstance(results.get(key), dict) and "error" not in results[key]


def throughput_table(section, names, batches):
    """Rows: variant; per batch: images/s median (min–max) and the ratio to torch eager."""
    header = ["variant"]
    for batch in batches:
        header += [f"batch {batch} images/s", f"× {BASELINE}"]
    rows = []
    for name in names:
        row = [name]
        for batch in batches:
            entry = section.get(batch, {}).get(name)
            if entry is None:
                row += ["—", ""]
            elif "error" in entry:
                row += ["failed", ""]
            else:
                row += [fmt_rate(entry["images_per_second"]), ratio(section, batch, name)]
        rows.append(row)
    return table(header, rows)


def other_loads(results):
    """Every other-process CPU share recorded in the results, wherever it is."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            if isinstance(value.get("other_load"), (int, float)):
                found.append(value["other_load"])
            found.extend(windows_load([value]))
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)

    walk(results)
    return found


def section_load_line(section):
    """`Other processes took up to … of the CPUs: batch 64 0 %, …` (train/inference tables)."""
    shares = [f"batch {batch} {fmt_share(max(windows_load(entries.values()), default=None))}"
              for batch, entries in section.items()]
    return ("Other processes' largest share of the CPUs during a timed window: "
            + ", ".join(shares) + ".")


def title_lines(results):
    """Title, machine, versions, load and the method."""
    env, versions = results["environment"], results["environment"]["versions"]
    machine = (f"{env['cpu_model']}, {env['cpu_count']} cores, torch threads "
               f"{env['torch_num_threads']}")
    if results["device"] != "cpu":
        machine += (f"; GPU {env.get('gpu_name')}, driver {env.get('nvidia_driver')}, "
                    f"CUDA {env.get('torch_cuda')}")
    load = (f"Load average at start {fmt_load(env.get('load_average'))}, at end "
            f"{fmt_load(env.get('load_average_end'))}")
    if "process_cpu_seconds" in env:
        load += (f"; this process got {env['process_cpu_seconds']:.0f} CPU-seconds in "
                 f"{results['wall_seconds']:.0f} s of wall time")
    return [f"# MNIST CNN benchmark: {results['device_name']}", "",
            f"{results['created']}, `{results['command']}`. torch {versions.get('torch')}, "
            f"jax {versions.get('jax')}, flax {versions.get('flax')}, optax "
            f"{versions.get('optax')}; {machine}. {load}.", "",
            f"Median over {results['method']['repeats']} interleaved windows (min–max in "
            f"brackets); first calls (compile/jit) excluded and listed below. × {BASELINE} = "
            f"variant median / {BASELINE} median.", ""]


def precision_lines(results):
    env = results["environment"]
    precision = results.get("precision", "highest")
    if results["device"] == "cpu":
        return [f"Precision: `--precision {precision}` (a CPU computes float32 either way).", ""]
    return [f"Precision: `--precision {precision}`, set through the engines' "
            f"`select_placement`: torch matmul TF32 {env.get('torch_matmul_allow_tf32')}, cuDNN "
            f"conv TF32 {env.get('torch_cudnn_allow_tf32')}; JAX default matmul precision "
            f"{env.get('jax_default_matmul_precision')}.", ""]


def header_lines(results):
    """Title, precision, the peak GEMM, a busy-machine warning and the variants."""
    lines = title_lines(results) + precision_lines(results)
    gemm = results.get("peak_gemm", {})
    rates_ = [f"{name} {fmt_rate(gemm[name]['gflop_per_second'])} GFLOP/s"
              for name in ("torch", "jax") if "gflop_per_second" in gemm.get(name, {})]
    if rates_:
        others = max(windows_load(v for v in gemm.values() if isinstance(v, dict)), default=None)
        lines += [f"**Peak float32 GEMM** ({gemm['size']}³): " + "; ".join(rates_)
                  + f" (others' CPU up to {fmt_share(others)}). % of peak below refers to "
                  f"torch's.", ""]
    busiest = max(other_loads(results), default=None)
    if results["device"] == "cpu" and busiest is not None and busiest > BUSY_WARNING:
        lines += [f"**Warning: other processes used up to {fmt_share(busiest)} of the CPUs during "
                  f"some measurements (listed with each table). torch's OpenMP threads slow down "
                  f"many times over when they must share cores; XLA's thread pool much less. "
                  f"Figures measured while the machine was busy are not representative.**", ""]
    for name, variant in results.get("variants", {}).items():
        note = "" if variant["status"] == "ok" else f" — not run: {variant['reason']}"
        lines.append(f"- `{name}`: {variant.get('description', '')}{note}.")
    flax_model = results["environment"].get("flax_model")
    if flax_model:
        lines.append("- The engine's Flax model uses: " + ", ".join(
            f"{k} = `{v}`" for k, v in flax_model.items()) + ".")
    return lines + [""]


def gflops_cell(entry):
    """`12.3 (45.6 %)` for one training entry."""
    if "error" in entry:
        return "failed"
    if entry.get("percent_of_peak") is None:
        return "—"
    return f"{entry['gflop_per_second']['median']:.1f} ({entry['percent_of_peak']:.1f} %)"


def training_lines(results, names):
    """Training images/s with ratios, then achieved GFLOP/s and % of peak."""
    if not section_ok(results, "train"):
        return []
    train, flops = results["train"], results["flops"]
    batches = list(train)
    rows = [[name] + [gflops_cell(train[b].get(name, {})) for b in batches] for name in names]
    return ["## Training step (forward, loss, backward, Adam), images/s", "",
            throughput_table(train, names, batches), "",
            f"Achieved GFLOP/s (% of peak GEMM). {flops['convention']}: "
            f"{flops['train_per_image'] / 1e6:.1f} MFLOP per training image.", "",
            table(["variant"] + [f"batch {b}" for b in batches], rows), "",
            section_load_line(train), ""]


def inference_lines(results, names):
    """Inference images/s with ratios, and the single-image latency."""
    if not section_ok(results, "inference"):
        return []
    lines = ["## Inference (logits), images/s", "",
             throughput_table(results["inference"], names, list(results["inference"])), "",
             section_load_line(results["inference"]), ""]
    latency_ms = results.get("latency_ms", {})
    if latency_ms:
        lines += ["Single-image latency, ms: " + "; ".join(
            f"{name} {fmt_ms(stats)}" for name, stats in latency_ms.items()) + ".", ""]
    return lines


def first_call_table(results, names):
    """First-call seconds (compile / jit / autotune) of every timed step."""
    header, columns = ["variant"], []
    for section, label in (("train", "train"), ("inference", "infer")):
        if section_ok(results, section):
            for batch in results[section]:
                header.append(f"{label} {batch}")
                columns.append(results[section][batch])
    if not columns:
        return []
    rows = []
    for name in names:
        row = [name]
        for column in columns:
            entry = column.get(name, {})
            row.append(f"{entry['first_call_seconds']:.2f}" if "first_call_seconds" in entry
                       else entry.get("error", "—"))
        rows.append(row)
    return ["## First call, seconds (compile / jit / autotune; not in the figures above)", "",
            table(header, rows), ""]


def layers_table(layers):
    """Per-layer forward and forward+backward ms, torch vs Flax (vs stock lax)."""
    if not layers or "error" in layers or "skipped" in layers:
        return []
    impls = list(dict.fromkeys(impl for row in layers["rows"] for impl in row["forward_ms"]))
    header = (["layer", "input (C,H,W)"] + [f"{i} fwd ms" for i in impls]
              + [f"{i} fwd+bwd ms" for i in impls] + ["flax/torch fwd+bwd", "others' CPU"])
    rows = []
    for row in layers["rows"]:
        cells = [f"{row['layer']} {row['kind']}", "×".join(map(str, row["input_shape"]))]
        for key in ("forward_ms", "forward_backward_ms"):
            cells += [fmt_ms(row[key][i]) if i in row[key] else "—" for i in impls]
        both = row["forward_backward_ms"]
        if "median" in both.get("flax", {}) and "median" in both.get("torch", {}):
            cells.append(f"{both['flax']['median'] / both['torch']['median']:.2f}")
        else:
            cells.append("")
        cells.append(fmt_share(row.get("other_load")))
        rows.append(cells)
    return [f"## Layers alone, batch {layers['batch_size']}, ms (median, min–max)", "",
            "flax = jitted as the Flax engine jits (`flax_impl.xla_cpu.jit` on the CPU); "
            "xla-default = a plain `jax.jit` (listed only where the two differ). "
            f"{layers['note']}.", "", table(header, rows), ""]


def time_to_accuracy_lines(tta):
    if not tta or "skipped" in tta:
        return []
    if "error" in tta:
        return ["## Time to accuracy", "", f"Failed: {tta['error']}", ""]
    rows = [[name, f"{t['seconds_to_target']:.1f}" if t["reached"] else "not reached",
             t["epochs_to_target"] or f"> {t['max_epochs']}",
             f"{100 * t['epochs'][-1]['test_accuracy']:.2f} %",
             "—" if t.get("first_call_seconds") is None else f"{t['first_call_seconds']:.1f}",
             fmt_share(t.get("other_load"))] for name, t in tta.items()]
    return [f"## Time to {100 * TARGET_ACCURACY:.1f} % test accuracy (the CLIs' loop stopped at "
            f"the first epoch that reaches it, tutorial settings, data on the device; compile "
            f"included, evaluation not timed)", "",
            table(["variant", "training seconds", "epochs", "last accuracy",
                   "first dispatch s (included)", "others' CPU"], rows), ""]


def end_to_end_lines(results):
    """One epoch through the CLIs' loop, beside the isolated step at the same batch size."""
    e2e = results.get("end_to_end", {})
    if not e2e:
        return []
    if "skipped" in e2e or "error" in e2e:
        return ["## End to end: one real MNIST epoch", "",
                f"Not run: {e2e.get('skipped') or e2e.get('error')}", ""]
    rows = [[framework, e["variant"], e["steps"], f"{e['train_seconds']:.1f}",
             f"{e['train_images_per_second']:,.0f}",
             "—" if e.get("isolated_step_images_per_second") is None
             else f"{e['isolated_step_images_per_second']:,.0f}",
             "" if e.get("end_to_end_vs_isolated") is None
             else f"{e['end_to_end_vs_isolated']:.2f}",
             f"{100 * e['test_accuracy']:.2f} %", fmt_share(e.get("other_load"))]
            for framework, e in e2e.items()]
    complete = all(e["complete_epoch"] for e in e2e.values())
    return ["## End to end: one real MNIST epoch through the CLIs' loop" if complete else
            "## End to end: real MNIST, the first steps of epoch 1 (--quick)", "",
            "The CLIs' loop (`mnist_common.loop`) with the engine, as `python -m "
            "<framework>_impl.train --epochs 1` runs it (in-memory loader, batch 256, the loss "
            "read every step; compile included, evaluation not): its metrics' `train_seconds`, "
            "`train_images_per_second` and `test_accuracy`, beside the isolated train step.", "",
            table(["framework", "variant", "steps", "train seconds", "images/s",
                   "isolated step images/s", "end to end / isolated", "test accuracy after",
                   "others' CPU"], rows), ""]


def cli_lines(cli):
    """The training CLIs as fresh processes: training seconds, process seconds, accuracy."""
    if not cli or "skipped" in cli:
        return []
    if "error" in cli:
        return ["## The training CLIs", "", f"Failed: {cli['error']}", ""]
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
                         f"{run['first_call_seconds']:.2f}" if run["first_call_recorded"]
                         else "not recorded", f"{100 * run['test_accuracy']:.2f} %"])
    return ["## The training CLIs, fresh processes (`python -m <framework>_impl.train`)", "",
            table(["framework", "precision", "steps", "10-epoch training s", "process s",
                   "first call s", "test accuracy"], rows), ""]


def memory_lines(results):
    """Peak host RSS, and per framework the peak device memory of each training batch size."""
    mem = results.get("memory")
    if not mem:
        return []
    lines = ["## Memory", "", f"Peak host RSS of the whole run: "
             f"{mem['host_peak_rss_bytes'] / 2**20:,.0f} MiB.", ""]
    train = results["train"] if section_ok(results, "train") else {}
    rows = []
    for batch, entries in train.items():
        snapshot = next((e["memory"] for e in entries.values() if "memory" in e), {})
        cells = [snapshot.get(k) for k in ("torch_device_peak_bytes", "jax_device_peak_bytes")]
        if any(c is not None for c in cells):
            rows.append([batch] + [f"{c / 2**20:,.0f}" if c is not None else "—" for c in cells])
    if rows:
        lines += ["Device memory after training at each batch size, MiB (torch: peak allocated "
                  "over its variants together; JAX: peak in use since start):", "",
                  table(["batch", "torch peak", "JAX peak"], rows), ""]
    return lines


def error_lines(results):
    """Every failed section, and every failed variant at a batch size, with its message."""
    errors = [f"- {key}: {value['error']}" for key, value in results.items()
              if isinstance(value, dict) and "error" in value]
    for key in ("train", "inference"):
        if section_ok(results, key):
            errors += [f"- {key}, batch {batch}, {name}: {entry['error']}"
                       for batch, entries in results[key].items()
                       for name, entry in entries.items() if "error" in entry]
    return ["## Errors", "", *errors, ""] if errors else []


def markdown(results):
    """The whole report of one device."""
    names = [n for n, v in results.get("variants", {}).items() if v["status"] == "ok"]
    parts = header_lines(results)
    parts += training_lines(results, names)
    parts += inference_lines(results, names)
    parts += first_call_table(results, names)
    parts += layers_table(results.get("layers", {}))
    parts += end_to_end_lines(results)
    parts += cli_lines(results.get("cli", {}))
    parts += time_to_accuracy_lines(results.get("time_to_accuracy", {}))
    parts += memory_lines(results)
    parts += error_lines(results)
    if not results.get("complete"):
        parts.append("**Interrupted: these are the sections finished before the stop.**")
    parts.append(f"Whole run on this device: {results.get('wall_seconds', 0):.0f} s.")
    return "\n".join(parts) + "\n"


def scaling_markdown(results):
    """The table of `run.py scaling`: images/s on 1 and N processes / devices."""
    lines = [f"# Data-parallel scaling ({results['device']}), measured {results['date']}", "",
             f"`python {results['command']}`: {results['steps']} steps at global batch 256 on "
             "real MNIST, the CLIs' own images/s.", "",
             "| framework | processes / devices | images/s | × one | last step's loss | device |",
             "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        one = next(r for r in results["rows"]
                   if r["framework"] == row["framework"] and r["count"] == results["counts"][0])
        lines.append(f"| {row['framework']} | {row['count']} | {row['images_per_second']:,.0f} | "
                     f"{row['images_per_second'] / one['images_per_second']:.2f} | "
                     f"{row['final_loss']:.4f} | {row['device']} |")
    return "\n".join(lines) + "\n"

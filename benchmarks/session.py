"""A run of the benchmark: each device start to end (every section in order, each finished figure
saved at once), its results published when complete; `--render` and `run.py scaling`."""

import datetime
import functools
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks import BASELINE, PROG, RESULTS_DIR, VARIANTS, harness, isolated, training
from benchmarks.harness import describe_error, status
from benchmarks.report import markdown, plot, scaling_markdown
from mnist_common import data, rundir
from mnist_common.allocator import keep_freed_memory
from mnist_common.errors import UsageError
from mnist_common.ownership import remove_owned, write_owned
from mnist_common.reporting import write_metrics


def jsonable(value):
    """The results as their JSON reads back: int keys made strings, NumPy scalars numbers."""
    return json.loads(json.dumps(value, default=lambda scalar: scalar.item()))


def start_results(device, settings):
    """What ran where and how, before anything is measured."""
    return {"schema": harness.SCHEMA, "device": device.slug(), "device_name": device.name(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([PROG, *sys.argv[1:]]), "quick": settings.quick,
            "precision": settings.precision, "complete": False,
            "environment": harness.environment(device),
            "method": {"timing": harness.METHOD, "repeats": settings.repeats,
                       "window_seconds": settings.window_seconds,
                       "min_calls_per_window": settings.min_steps,
                       "warmup_calls": settings.warmup_steps,
                       "ratio": f"variant median / {BASELINE} median"}}


class Session:
    """The results of one device, and each section run into them (a failure is recorded)."""

    def __init__(self, device, settings, data_root, data_problem, save):
        self.device, self.settings, self.save = device, settings, save
        self.data_root, self.data_problem = data_root, data_problem
        self.started, self.cpu_started = time.perf_counter(), harness.process_cpu_seconds()
        self.results = start_results(device, settings)

    def saved(self):
        self.results["wall_seconds"] = time.perf_counter() - self.started
        self.save(jsonable(self.results))

    def section(self, key, function, *args):
        """results[key] from `function(*args)` (a dict, or (name, figures) pairs, each saved as
        it comes); an exception becomes {"error": …} beside what was measured."""
        self.results[key] = part = {}
        try:
            produced = function(*args)
            for name, figures in produced.items() if isinstance(produced, dict) else produced:
                part[name] = figures
                self.saved()
        except Exception as err:  # what was measured before it stays beside the error
            self.results[key] = {**part, "error": harness.describe_error(err)}
            harness.status(f"{key} failed: {self.results[key]['error']}")
            traceback.print_exc(file=sys.stderr)
        self.saved()

    def real_data_section(self, key, wanted, why_not, measure):
        """Run `measure()`, a section that needs real MNIST, or record why it did not run."""
        if wanted and self.data_root is not None:
            return self.section(key, measure)
        self.results[key] = {"skipped": why_not if not wanted else self.data_problem}

    @functools.cached_property
    def splits(self):
        """(data root, train arrays, test arrays), read once."""
        return (self.data_root, data.load_arrays(self.data_root, train=True),
                data.load_arrays(self.data_root, train=False))

    def run_isolated(self):
        """Peak GEMM, the variants' train steps and logits, the layers alone."""
        device, settings, results = self.device, self.settings, self.results
        harness.status(f"[{device.kind}] {device.name()}: FLOP count and peak GEMM")
        results["flops"] = flops = isolated.flop_counts()
        self.section("peak_gemm", isolated.measure_gemm, device, settings)
        gemm = results["peak_gemm"]  # the device's peak: torch's float32 GEMM median, else jnp's
        results["peak_gflop_per_second"] = peak = next(
            (gemm[name]["gflop_per_second"]["median"] for name in ("torch", "jax")
             if "gflop_per_second" in gemm.get(name, {})), None)
        torch.manual_seed(0)
        variants, skipped = isolated.build_variants(device, settings.variants)
        results["variants"] = {
            name: {"framework": name.split("-")[0], "description": VARIANTS[name],
                   **({"status": "ok"} if name in variants else
                      {"status": "skipped", "reason": skipped[name]})}
            for name in [*variants, *skipped]}
        for key in ("train", "inference"):
            self.section(key, isolated.per_batch, device, variants, settings, key, flops, peak)
        if "error" not in results["inference"]:
            results["latency_ms"] = isolated.latency(results["inference"])
        if settings.layers:
            self.section("layers", isolated.measure_layers, device, settings, flops)
        else:
            results["layers"] = {"skipped": "--no-layers"}

    def run_real_data(self):
        """End to end, time to accuracy, the CLIs: the sections that train on real MNIST."""
        device, settings, results = self.device, self.settings, self.results
        self.real_data_section("end_to_end", settings.epoch, "--no-epoch", lambda: (
            training.measure_end_to_end(device, settings, self.splits, results["train"])))
        self.real_data_section(
            "time_to_accuracy", settings.time_to_accuracy, "run with --time-to-accuracy",
            lambda: training.measure_time_to_accuracy(device, self.splits))
        cli = settings.cli if settings.cli is not None else device.kind == "gpu"
        self.real_data_section("cli", cli, "on a CPU only with --cli (it trains 10 epochs per "
                               "framework: minutes)" if settings.cli is None else "--no-cli",
                               lambda: training.measure_cli(device, settings, self.data_root))

    def finish(self):
        env = self.results["environment"]
        self.results["memory"] = harness.memory(self.device)
        env["load_average_end"] = harness.load_average()
        # CPU seconds this process got; far below wall x threads means the machine was shared.
        env["process_cpu_seconds"] = harness.process_cpu_seconds() - self.cpu_started
        self.results["wall_seconds"] = time.perf_counter() - self.started
        self.results["complete"] = True
        return jsonable(self.results)


def run_device(device, settings, data_root, data_problem, save):
    """All measurements on one device; `save(results)` after each figure; returns results."""
    session = Session(device, settings, data_root, data_problem, save)
    session.run_isolated()
    session.run_real_data()
    return session.finish()


def write_report(json_path, results):
    """X.md and X.png (without Matplotlib: none) beside X.json; returns the Markdown."""
    text = (markdown if results["schema"] == harness.SCHEMA else scaling_markdown)(results)
    if results["schema"] == harness.SCHEMA:
        try:
            plot(results, json_path.with_name(f"{json_path.stem}.png"))
        except ImportError as err:  # a bare GPU image may lack matplotlib
            status(f"no PNG ({describe_error(err)}); run `{PROG} --render {json_path}` where it is")
    write_owned(json_path.with_name(f"{json_path.stem}.md"), text)
    return text


def render(path):
    """--render X.json: X.md and X.png beside it (never over a user's file); prints X.md."""
    results, why = harness.read_results(path), "not a complete results file of this benchmark"
    if results is None:
        raise UsageError(f"--render {path}: " + (f"{why} (a JSON object written by {PROG})"
                                                 if os.path.isfile(path) else "no such file"))
    harness.refuse_strangers(path.parent, [f"{path.stem}.md", f"{path.stem}.png"], "--render")
    try:
        print(write_report(path, results))
    except (TypeError, KeyError, IndexError, ValueError, AttributeError, StopIteration):
        raise UsageError(f"--render {path}: {why} (a JSON object written by {PROG})") from None
    except OSError as err:
        raise UsageError(f"--render {path}: cannot write its report beside it "
                         f"({err.strerror or err})") from None


def publish(out_dir, results, partial):
    """A device's complete results: <device>.json, .md and .png, then the partial file goes."""
    path = out_dir / f"{results['device']}.json"
    try:
        harness.refuse_strangers(out_dir, [path.name, f"{path.stem}.md", f"{path.stem}.png"])
    except UsageError as err:
        raise UsageError(f"{err}; the results are in {partial}") from None
    write_metrics(path, results)
    text = write_report(path, results)
    remove_owned(partial)
    status(f"wrote {out_dir / results['device']}.{{json,md,png}} ({results['wall_seconds']:.0f} s)")
    print(text)


def run_benchmark(settings, partials):
    """Devices found and the out-dir checked before it is created; each device measured, its
    figures in <device>.partial.json (`partials`) until published; empty new dirs removed."""
    keep_freed_memory()  # as the training CLIs do: mnist_common/allocator.py
    if settings.cli is not False and settings.devices != ("cpu",):
        # Before JAX starts on the GPU: it allocates as it goes (not 75 % up front), so a
        # training CLI beside it fits (the CLIs get training.CLI_ENVIRONMENT).
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    devices = harness.find_devices(settings.devices[0], settings.precision)
    if settings.out_dir is None and settings.quick:
        out_dir = Path(tempfile.mkdtemp(prefix="mnist-bench-quick-"))  # outside the repository
        created = [out_dir]
        status(f"--quick: writing the results to the scratch directory {out_dir}")
    else:
        out_dir = settings.out_dir or RESULTS_DIR
        created = harness.prepare_out_dir(out_dir, [name for device in devices for name in
                                                    harness.output_names(device.slug())])
    cache = tempfile.mkdtemp(prefix="bench-inductor-")  # first calls are cold compiles
    os.environ.update(TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=f"{cache}/triton")
    try:
        data_root, data_problem = None, "--no-epoch, no --time-to-accuracy, --no-cli"
        if settings.epoch or settings.time_to_accuracy or settings.cli is not False:
            data_root, data_problem = training.prepare_data(settings.quick)
        for device in devices:
            partial = out_dir / f"{device.slug()}.partial.json"

            def save(results, partial=partial):
                write_metrics(partial, results)
                if partial not in partials:
                    partials.append(partial)

            publish(out_dir, run_device(device, settings, data_root, data_problem, save), partial)
            partials[:] = [p for p in partials if p != partial]  # published: no longer partial
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        rundir.remove_created(created)


def run_scaling(args, argv):
    """`run.py scaling`: the training CLIs on each count; scaling-<device>.json and .md."""
    stem = f"scaling-{args.device}"
    created = harness.prepare_out_dir(args.out_dir, [f"{stem}.json", f"{stem}.md"])
    try:
        rows = training.measure_scaling(args.device, args.steps, sorted(args.devices))
    except BaseException:
        rundir.remove_created(created)
        raise
    results = {"schema": harness.SCALING_SCHEMA, "command": " ".join([PROG, "scaling", *argv]),
               "device": args.device, "steps": args.steps, "counts": sorted(args.devices),
               "rows": rows, "date": datetime.date.today().isoformat()}
    write_metrics(args.out_dir / f"{stem}.json", results)
    print(write_report(args.out_dir / f"{stem}.json", results))

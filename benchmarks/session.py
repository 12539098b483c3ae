"""One device, start to end: every section in order, each finished figure saved at once."""

import datetime
import functools
import json
import sys
import time
import traceback

import torch

from benchmarks import PROG, harness, isolated, training
from mnist_common import data


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
                       "ratio": f"variant median / {isolated.BASELINE} median"}}


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
            name: {"framework": name.split("-")[0], "description": isolated.VARIANTS[name],
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

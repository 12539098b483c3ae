"""One device, start to end: every section in order, the results saved after each one."""

import datetime
import sys
import time
import traceback

import numpy as np
import torch

from benchmarks import PROG, end_to_end
from benchmarks.accuracy import measure_time_to_accuracy
from benchmarks.environment import environment, load_average, memory
from benchmarks.flops import flop_counts
from benchmarks.layers import measure_layers
from benchmarks.measure import (
    latency,
    measure_gemm,
    measure_inference,
    measure_training,
    peak_gflops,
)
from benchmarks.timing import METHOD, describe_error, process_cpu_seconds, status
from benchmarks.variants import BASELINE, VARIANTS, build_variants
from mnist_common import data

SCHEMA = "mnist-cnn-benchmark/1"


def jsonable(value):
    """Results with int keys made strings and NumPy scalars made Python numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def start_results(device, settings):
    """What ran where and how, before anything is measured."""
    return {"schema": SCHEMA, "device": device.slug(), "device_name": device.name(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([PROG, *sys.argv[1:]]), "quick": settings.quick,
            "precision": settings.precision, "complete": False,
            "environment": environment(device),
            "method": {"timing": METHOD, "repeats": settings.repeats,
                       "window_seconds": settings.window_seconds,
                       "min_calls_per_window": settings.min_steps,
                       "warmup_calls": settings.warmup_steps,
                       "wait_quiet_seconds": settings.wait_quiet,
                       "train_step": "the engine's train_step with the loss read back to the "
                                     "host each step, synthetic data placed by the engine",
                       "inference": "the engine's logits (no loss), back on the host",
                       "end_to_end": "mnist_common.loop.train_and_evaluate, one epoch, in this "
                                     "process after the isolated measurements",
                       "ratio": f"variant median / {BASELINE} median"}}


def variant_table(variants, skipped):
    out = {name: {"framework": v.framework, "status": "ok", "description": VARIANTS[name]}
           for name, v in variants.items()}
    out.update({name: {"framework": name.split("-")[0], "status": "skipped",
                       "description": VARIANTS[name], "reason": reason}
                for name, reason in skipped.items()})
    return out


class Session:
    """The results of one device, and each section run into them (a failure is recorded)."""

    def __init__(self, device, settings, data_root, data_problem, save):
        self.device, self.settings, self.save = device, settings, save
        self.data_root, self.data_problem = data_root, data_problem
        self.started, self.cpu_started = time.perf_counter(), process_cpu_seconds()
        self.results = start_results(device, settings)

    def section(self, key, function, *args):
        """results[key] = function(*args); an exception becomes {"error": …}; then save."""
        try:
            self.results[key] = function(*args)
        except Exception as err:
            self.results[key] = {"error": describe_error(err)}
            status(f"{key} failed: {self.results[key]['error']}")
            traceback.print_exc(file=sys.stderr)
        self.results["wall_seconds"] = time.perf_counter() - self.started
        self.save(jsonable(self.results))

    def skip_or_run(self, key, wanted, why_not, function, *args):
        """Run a section that needs real MNIST, or record why it did not run."""
        if not wanted:
            self.results[key] = {"skipped": why_not}
        elif self.data_root is None:
            self.results[key] = {"skipped": self.data_problem}
        else:
            self.section(key, function, *args)

    def isolated(self):
        """Peak GEMM, the variants' train steps and logits, the layers alone."""
        device, settings, results = self.device, self.settings, self.results
        status(f"[{device.kind}] {device.name()}: FLOP count and peak GEMM")
        results["flops"] = flops = flop_counts()
        self.section("peak_gemm", measure_gemm, device, settings)
        results["peak_gflop_per_second"] = peak = peak_gflops(results["peak_gemm"])
        torch.manual_seed(0)
        variants, skipped = build_variants(device, settings.variants)
        results["variants"] = variant_table(variants, skipped)
        self.section("train", measure_training, device, variants, settings, flops, peak)
        self.section("inference", measure_inference, device, variants, settings, flops, peak)
        if "error" not in results["inference"]:
            results["latency_ms"] = latency(results["inference"])
        if settings.layers:
            self.section("layers", measure_layers, device, settings, flops)
        else:
            results["layers"] = {"skipped": "--no-layers"}

    def real_data(self):
        """End to end, time to accuracy, the CLIs: the sections that train on real MNIST."""
        device, settings, results = self.device, self.settings, self.results
        self.skip_or_run("end_to_end", settings.epoch, "--no-epoch",
                         end_to_end.measure_end_to_end, device, settings, self.data_root)
        if "error" not in results["end_to_end"] and "skipped" not in results["end_to_end"] \
                and "error" not in results["train"]:
            end_to_end.beside_isolated(results["end_to_end"], results["train"])
        self.skip_or_run("time_to_accuracy", settings.time_to_accuracy,
                         "run with --time-to-accuracy", self.time_to_accuracy)
        cli = settings.cli if settings.cli is not None else device.kind == "gpu"
        self.skip_or_run("cli", cli, "on a CPU only with --cli (it trains 10 epochs per "
                         "framework: minutes)" if settings.cli is None else "--no-cli",
                         end_to_end.measure_cli, device, settings, self.data_root)

    def time_to_accuracy(self):
        splits = (data.load_arrays(self.data_root, train=True),
                  data.load_arrays(self.data_root, train=False))
        return measure_time_to_accuracy(self.device, splits)

    def finish(self):
        env = self.results["environment"]
        self.results["memory"] = memory(self.device)
        env["load_average_end"] = load_average()
        # CPU seconds this process got; far below wall x threads means the machine was shared.
        env["process_cpu_seconds"] = process_cpu_seconds() - self.cpu_started
        self.results["wall_seconds"] = time.perf_counter() - self.started
        self.results["complete"] = True
        return jsonable(self.results)


def run_device(device, settings, data_root, data_problem, save):
    """All measurements on one device; `save(results)` after each section; returns results."""
    session = Session(device, settings, data_root, data_problem, save)
    session.isolated()
    session.real_data()
    return session.finish()

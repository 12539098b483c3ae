"""The harness every measurement runs in: how a figure is timed, what the benchmark may do to
the disk, how it runs a process, how it stops, and the devices and what ran on them.

Timing: each function's first call alone (compile), a warm-up, then windows of calls ended by a
device synchronisation, the variants interleaved (A B A B ...) so that drift hits all alike;
median and min-max; beside every window the share of the CPUs other processes took
(/proc/stat): on a shared machine torch's OpenMP threads slow down many times over.

Files: the benchmark replaces only what the project wrote (`mnist_common.ownership`, the one
rule for every writer); each finished figure goes
into `<device>.partial.json`, and only a complete run replaces `<device>.{json,md,png}`.
"""

import collections
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import torch

from benchmarks import REPO, cpu_model
from flax_impl import backend as flax_backend
from mnist_common import rundir
from mnist_common.allocator import keep_freed_memory
from mnist_common.errors import UsageError, describe
from mnist_common.fileio import say
from mnist_common.ownership import unowned
from torch_impl import backend as torch_backend

WINDOW_LIMIT_FACTOR = 4  # a timed window stops early once it lasts 4 x --window-seconds
METHOD = ("each function is called once alone (first call: compile/jit/autotune), then warmed "
          "up; a repeat is a window of several calls ended by a device synchronisation; "
          "variants are interleaved A B A B ...; median and min-max over repeats")
_STARTED = time.perf_counter()
SCHEMA = "mnist-cnn-benchmark/1"
SCALING_SCHEMA = "mnist-cnn-scaling/1"

# One function to time: `call()` does one unit of work, `sync(result)` waits for it.
Candidate = collections.namedtuple("Candidate", "name call sync")


def status(message):
    """One progress line on stderr, prefixed with the seconds since start."""
    say(f"{time.perf_counter() - _STARTED:6.1f}s {message}")


def summarize(samples):
    """Median, min and max of a list of numbers (and the numbers)."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": list(samples)}


def rates(seconds_per_call, work_per_call):
    """`summarize` of work / second from seconds-per-call samples."""
    return summarize([work_per_call / s for s in seconds_per_call["samples"]])


def describe_error(err):
    """One line for the results file: the exception's type and first message line."""
    return describe(err)[:500]


def process_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine_busy_seconds():
    try:
        ticks = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # not idle, iowait


class OtherLoad:
    """Share of all CPUs that other processes used between creation and stop() (Linux)."""

    def __init__(self):
        self.busy, self.mine = _machine_busy_seconds(), process_cpu_seconds()
        self.wall = time.perf_counter()

    def seconds(self):
        return time.perf_counter() - self.wall

    def stop(self):
        """Other processes' CPU-seconds / (wall seconds x CPUs), or None off Linux."""
        busy = _machine_busy_seconds()
        if busy is None or self.busy is None:
            return None
        others = (busy - self.busy) - (process_cpu_seconds() - self.mine)
        capacity = self.seconds() * os.cpu_count()
        # /proc/stat counts in 10 ms ticks: clamp the rounding of short windows into [0, 1].
        return min(1.0, max(0.0, others / capacity)) if capacity > 0 else None


def windows_load(results):
    """The other-process CPU shares of every timed window in these timing results."""
    return [load for result in results for load in result.get("other_load_per_window", [])
            if load is not None]


def time_interleaved(candidates, settings):
    """Time each candidate: first call alone, warm-up, then `repeats` interleaved windows of
    calls ended by a synchronisation (early past WINDOW_LIMIT_FACTOR x --window-seconds).
    Returns {name: {"first_call_seconds", "calls_per_window", "other_load_per_window",
    "seconds_per_call": stats}}, or {name: {"error": "..."}} for a candidate that raised."""
    results, calls = {}, {}
    for cand in candidates:
        try:
            seconds = []  # the first call, then each warm-up call
            for _ in range(1 + settings.warmup_steps):
                start = time.perf_counter()
                cand.sync(cand.call())
                seconds.append(time.perf_counter() - start)
        except Exception as err:  # e.g. torch.compile without a working compiler
            results[cand.name] = {"error": describe_error(err)}
            status(f"  {cand.name}: failed: {results[cand.name]['error']}")
            continue
        calls[cand.name] = max(settings.min_steps,
                               math.ceil(settings.window_seconds / max(seconds[-1], 1e-7)))
        results[cand.name] = {"first_call_seconds": seconds[0], "calls_per_window": [],
                              "other_load_per_window": [], "samples": []}
    longest = WINDOW_LIMIT_FACTOR * settings.window_seconds
    for _ in range(settings.repeats):
        for cand in (c for c in candidates if "samples" in results[c.name]):
            window = OtherLoad()
            try:
                for done in range(1, calls[cand.name] + 1):
                    out = cand.call()
                    if done >= settings.min_steps and window.seconds() > longest:
                        break
                cand.sync(out)
            except Exception as err:
                results[cand.name] = {"error": describe_error(err)}
                continue
            results[cand.name]["samples"].append(window.seconds() / done)
            results[cand.name]["calls_per_window"].append(done)
            results[cand.name]["other_load_per_window"].append(window.stop())
    for result in results.values():
        if "samples" in result:
            result["seconds_per_call"] = summarize(result.pop("samples"))
    return results


def read_results(path):
    """The results (or scaling) dict in `path`, or None when it is not one of this benchmark's."""
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    ok = isinstance(results, dict) and results.get("schema") in (SCHEMA, SCALING_SCHEMA)
    return results if ok else None


def output_names(stem):
    return [f"{stem}.json", f"{stem}.md", f"{stem}.png", f"{stem}.partial.json"]


def refuse_strangers(directory, names, flag="--out-dir"):
    """A UsageError naming the files among `names` in `directory` this benchmark did not write."""
    try:
        strangers = unowned(directory, names)
    except OSError as err:
        raise UsageError(f"{flag} {directory}: cannot read it ({err.strerror or err})") from None
    one = len(strangers) == 1
    if strangers:
        raise UsageError(f"{flag} {directory}: {', '.join(strangers)} {'is' if one else 'are'} "
                         f"not this benchmark's output and would be replaced; move "
                         f"{'it' if one else 'them'} or choose another {flag}")


def prepare_out_dir(path, names):
    """Check `names` in `path`, then create it as `rundir` does; returns the dirs created."""
    refuse_strangers(path, names)
    return rundir.prepare_out_dir(path)[1]


def run_process(words, env=None, timeout=None):
    """The one way the benchmark runs a program (repository root, no stdin, output captured):
    (subprocess.CompletedProcess, wall seconds)."""
    start = time.perf_counter()
    done = subprocess.run(words, cwd=REPO, env=env, stdin=subprocess.DEVNULL, text=True,
                          capture_output=True, timeout=timeout)
    return done, time.perf_counter() - start


def handle_sigterm():
    """SIGTERM (as from `timeout`) exits 143, a SystemExit that no section catches."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def stop_signal(err):
    """The signal `err` stands for (Ctrl-C, or the exit SIGINT or SIGTERM asked for), or None."""
    if isinstance(err, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(err, SystemExit) and err.code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        return signal.Signals(err.code - 128)
    return None


PACKAGES = ("torch", "torchvision", "jax", "jaxlib", "flax", "optax", "numpy", "matplotlib")
ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
               "XLA_PYTHON_CLIENT_MEM_FRACTION", "CUDA_VISIBLE_DEVICES", "GLIBC_TUNABLES",
               "JAX_COMPILATION_CACHE_DIR")  # a persistent cache shortens first calls


@dataclasses.dataclass
class Device:
    """One device and each engine's placement on it (either may be absent on a GPU)."""

    kind: str  # "cpu" or "gpu"
    torch: object  # torch_impl.backend.Placement or None
    flax: object  # flax_impl.backend.Placement or None

    def torch_sync(self, _result=None):
        if self.torch is not None and self.torch.device.type == "cuda":
            torch.cuda.synchronize(self.torch.device)

    def name(self):
        if self.kind == "cpu":
            return f"{cpu_model()} ({os.cpu_count()} cores)"
        if self.torch is not None:
            return torch.cuda.get_device_name(self.torch.device)
        return self.flax.device.device_kind

    def slug(self):
        """The stem of this device's results files: `cpu`, `gpu-nvidia-h100-80gb-hbm3`."""
        if self.kind == "cpu":
            return "cpu"
        return "gpu-" + re.sub(r"[^a-z0-9]+", "-", self.name().lower()).strip("-")


def _placement(backend, device, precision):
    """The engine's placement on `device` with one device (a benchmark times one), or None."""
    try:
        return backend.select_placement(device, precision)._replace(group=None)
    except UsageError:
        return None


def find_devices(requested, precision):
    """Devices to measure for --device; a GPU asked for but absent is a UsageError."""
    devices = [Device(kind, _placement(torch_backend, torch_name, precision),
                      _placement(flax_backend, kind, precision))
               for kind, torch_name in (("cpu", "cpu"), ("gpu", "cuda"))
               if requested in (kind, "all")]
    devices = [d for d in devices if d.torch is not None or d.flax is not None]
    if requested == "gpu" and not devices:
        raise UsageError("--device gpu: neither PyTorch nor JAX sees a GPU")
    return devices


def package_versions():
    """Installed versions of everything that can change a timing, jax's GPU plugins too."""
    versions = {"python": platform.python_version()}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name in PACKAGES or name.startswith(("jax-cuda", "jax_cuda", "jax-rocm")):
            versions[name] = dist.version
    return {**versions, **{name: versions.get(name) for name in PACKAGES}}


def load_average():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def environment(device):
    """Hardware, threads, versions and settings that a reader needs to trust the numbers."""
    env = {
        "versions": package_versions(), "platform": platform.platform(),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "env": {k: os.environ.get(k) for k in ENVIRONMENT},
        # Applied by the benchmark's main as by the training CLIs; idempotent, so asking again
        # records whether it holds here.
        "malloc_keeps_freed_memory": keep_freed_memory(),
        "load_average": load_average()}
    if device.kind == "gpu":
        env.update({  # the TF32 switches as --precision set them through select_placement
            "gpu_name": device.name(),
            "torch_cuda": torch.version.cuda,
            "torch_cudnn": torch.backends.cudnn.version() if device.torch is not None else None,
            "torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "jax_device_kind": device.flax.device.device_kind if device.flax else None})
    return env


def memory(device):
    """Peak host RSS of this process, and each framework's peak device memory on a GPU."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"host_peak_rss_bytes": rss if sys.platform == "darwin" else rss * 1024,
           "torch_device_peak_bytes": None, "jax_device_peak_bytes": None}
    if device.kind == "gpu" and device.torch is not None:
        out["torch_device_peak_bytes"] = torch.cuda.max_memory_allocated(device.torch.device)
    if device.kind == "gpu" and device.flax is not None:
        out["jax_device_peak_bytes"] = (device.flax.device.memory_stats() or {}).get(
            "peak_bytes_in_use")
    return out


"""Side-by-side speed of the tutorial MNIST CNN in PyTorch and in Flax: `python benchmarks/run.py`.

What is measured, on every device present (the CPU always, the GPU when there is one), for each
variant — torch eager (NCHW), torch eager channels_last, `torch.compile`, Flax under `jax.jit`
with the model the project ships (`flax_impl.train.create_model(device)`), and, when that model
uses a custom convolution, Flax with stock `lax.conv_general_dilated` (`flax-xla-conv`):

- training throughput (images/s) of the project's own train step — forward, cross-entropy,
  backward, Adam update, the loss read back to the host as the training loop does — at batch
  64, 256 (the tutorial's) and 1024, on synthetic data already on the device;
- inference throughput (logits only) at batch 1, 256 and 10,000, and single-image latency (ms);
- the first call of every step (compile / jit / autotune), reported on its own, never inside a
  steady-state figure;
- achieved GFLOP/s and its share of this device's float32 GEMM rate, measured in the same run
  (torch `mm`, 2048³ on CPU, 8192³ on GPU; `jnp.matmul` recorded beside it);
- every conv and linear layer alone at batch 256, forward and forward+backward: torch vs the
  Flax model's convolution vs stock `lax.conv_general_dilated`, so one sees where time goes;
- one real MNIST epoch with the in-memory loader (seconds, then test accuracy), per framework;
- with `--time-to-accuracy`: the whole training set resident on the device, tutorial settings,
  training seconds until test accuracy >= 98.5 % (evaluation excluded), per framework;
- peak host RSS, and on a GPU the peak device memory of each framework;
- beside every figure, the share of the CPUs that other processes took meanwhile (/proc/stat):
  on a shared machine torch's OpenMP threads slow down many times over, XLA's far less.

How: every timed function is called once alone (the first-call time), then warmed up; the clock
is read only after the device is synchronised (`torch.cuda.synchronize()`,
`jax.block_until_ready()`); one repeat is a window of several calls (at least `--window-seconds`
and at least `--min-steps` calls); the variants are interleaved (A B A B …) so drift hits all
alike; `--repeats` windows each; the median and the min–max over windows are reported. On a
shared machine, `--wait-quiet S` waits before each measurement until other processes are idle.
FLOPs are derived from the layer shapes of the torch model: forward = 2 × the multiply-adds of
each convolution and linear layer (bias, ReLU, pooling and loss not counted), training = 3 ×
forward. Results go to `<out-dir>/<device>.{json,md,png}`, written atomically.

The numbers in `benchmarks/results/` say which machine made them (CPU model, core count,
threads, GPU, versions, load average); nothing here is typed in by hand.
"""

import argparse
import dataclasses
import datetime
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import linen

import flax_impl.model as flax_model
import flax_impl.train as flax_train
import torch_impl.train as torch_train
from mnist_common import data, loaders
from mnist_common.config import Config, positive_int
from mnist_common.errors import DataError, UsageError, run_cli
from mnist_common.fileio import atomic_path, write_text_atomic
from torch_impl.model import CNN as TorchCNN

PROG = "benchmarks/run.py"
SCHEMA = "mnist-cnn-benchmark/1"
VARIANTS = {
    "torch-eager": "torch_impl's model and train_step, eager, NCHW",
    "torch-channels-last": "the same with model and input in torch.channels_last memory format",
    "torch-compile": "the same with torch.compile(model, dynamic=False) (default mode)",
    "flax-jit": "flax_impl's create_train_state / train_step under jax.jit, NHWC: the model "
                "flax_impl.train.create_model(device) ships for this device",
    "flax-xla-conv": "the same with flax_impl.model.CNN() at its defaults: stock "
                     "lax.conv_general_dilated (and pooling); run only when that differs",
}
BASELINE = "torch-eager"  # every ratio is variant / torch eager NCHW
DEFAULT_VARIANT = {"torch": "torch-eager", "flax": "flax-jit"}  # what the training CLIs run
TRAIN_BATCH_SIZES = (64, 256, 1024)
INFERENCE_BATCH_SIZES = (1, 256, 10_000)
LAYER_BATCH_SIZE = 256  # the tutorial's batch size
TUTORIAL = Config()  # batch 256, Adam 2e-4, seed 0, 10 epochs
TARGET_ACCURACY = 0.985  # the tutorial reports 98.53 % after 10 epochs
GEMM_SIZE = {"cpu": 2048, "gpu": 8192}
WINDOW_LIMIT_FACTOR = 4  # a timed window stops early once it lasts 4 x --window-seconds
FLOP_CONVENTION = ("forward FLOPs = 2 x multiply-adds of each conv and linear layer (bias, ReLU, "
                   "max-pool, softmax and loss not counted); training FLOPs = 3 x forward "
                   "(backward = input gradient + weight gradient, each about one forward)")
TIMING_METHOD = ("each function is called once alone (first call: compile/jit/autotune), then "
                 "warmed up; a repeat is a window of several calls ended by a device "
                 "synchronisation; variants are interleaved A B A B ...; median and min-max "
                 "over repeats")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to run; built from the command line."""

    devices: tuple  # ("cpu",), ("gpu",) or both
    variants: tuple
    train_batch_sizes: tuple
    inference_batch_sizes: tuple
    layer_batch_size: int
    repeats: int  # timed windows per measurement
    window_seconds: float  # a window lasts at least this long ...
    min_steps: int  # ... and holds at least this many calls
    warmup_steps: int  # untimed calls after the first one
    wait_quiet: float  # before each measurement, wait up to this long for a quiet machine
    layers: bool  # each conv/linear layer alone
    epoch: bool  # one real MNIST epoch per framework
    epoch_max_steps: int | None  # --quick: only the first steps of that epoch
    time_to_accuracy: bool
    quick: bool
    out_dir: Path
    render: str | None  # --render: no measurement, only reports from this JSON


# ---------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class Candidate:
    """One function to time: `call()` does one unit of work, `sync(result)` waits for it."""

    name: str
    call: object
    sync: object


def summarize(samples):
    """Median, min and max of a list of numbers (and the numbers)."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": list(samples)}


def rates(seconds_per_call, work_per_call):
    """`summarize` of work / second from seconds-per-call samples."""
    return summarize([work_per_call / s for s in seconds_per_call["samples"]])


def describe_error(err):
    """One line for the results file: the exception's type and first message line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:500]


def first_calls(cand, settings):
    """(seconds of the first call, seconds of the last warm-up call) of one candidate."""
    start = time.perf_counter()
    cand.sync(cand.call())
    first = estimate = time.perf_counter() - start
    for _ in range(settings.warmup_steps):
        start = time.perf_counter()
        cand.sync(cand.call())
        estimate = time.perf_counter() - start
    return first, estimate


def timed_window(cand, calls, settings):
    """(seconds per call, calls made, others' CPU share) of one window of up to `calls` calls.

    A window planned from a fast warm-up call could last minutes if the machine gets busy, so
    it ends early past WINDOW_LIMIT_FACTOR x --window-seconds (the calls made still count).
    """
    longest = WINDOW_LIMIT_FACTOR * settings.window_seconds
    other_load = OtherLoad()
    start = time.perf_counter()
    for done in range(1, calls + 1):
        out = cand.call()
        if done >= settings.min_steps and time.perf_counter() - start > longest:
            break
    cand.sync(out)
    return (time.perf_counter() - start) / done, done, other_load.stop()


def windows_load(results):
    """The other-process CPU shares of every timed window in these timing results."""
    return [load for result in results for load in result.get("other_load_per_window", [])
            if load is not None]


def time_interleaved(candidates, settings):
    """Time each candidate: first call alone, warm-up, then `repeats` interleaved windows.

    Returns {name: {"first_call_seconds", "calls_per_window", "other_load_per_window",
    "seconds_per_call": stats}} or {name: {"error": "..."}} for a candidate that raised.
    """
    wait_for_quiet(settings.wait_quiet)
    results, live = {}, []
    for cand in candidates:
        try:
            first, estimate = first_calls(cand, settings)
        except Exception as err:  # e.g. torch.compile without a working compiler
            results[cand.name] = {"error": describe_error(err)}
            status(f"  {cand.name}: failed: {results[cand.name]['error']}")
            continue
        calls = max(settings.min_steps, math.ceil(settings.window_seconds / max(estimate, 1e-7)))
        results[cand.name] = {"first_call_seconds": first, "calls_per_window": [],
                              "other_load_per_window": [], "samples": []}
        live.append((cand, calls))
    for _ in range(settings.repeats):
        for cand, calls in live:
            result = results[cand.name]
            if "error" in result:
                continue
            try:
                seconds, done, load = timed_window(cand, calls, settings)
            except Exception as err:
                results[cand.name] = {"error": describe_error(err)}
                continue
            result["samples"].append(seconds)
            result["calls_per_window"].append(done)
            result["other_load_per_window"].append(load)
    for result in results.values():
        if "samples" in result:
            result["seconds_per_call"] = summarize(result.pop("samples"))
    return results


_STARTED = time.perf_counter()


def status(message):
    """One progress line on stderr, prefixed with the seconds since start."""
    print(f"{time.perf_counter() - _STARTED:6.1f}s {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Devices and the environment


@dataclasses.dataclass
class Device:
    """One device as both frameworks see it (either side may be absent on a GPU)."""

    kind: str  # "cpu" or "gpu"
    torch: object  # torch.device or None
    jax: object  # jax Device or None

    def torch_sync(self, _result=None):
        if self.torch is not None and self.torch.type == "cuda":
            torch.cuda.synchronize(self.torch)

    @staticmethod
    def jax_sync(result):
        jax.block_until_ready(result)

    def name(self):
        if self.kind == "cpu":
            return f"{cpu_model()} ({os.cpu_count()} cores)"
        if self.torch is not None:
            return torch.cuda.get_device_name(self.torch)
        return self.jax.device_kind

    def slug(self):
        if self.kind == "cpu":
            return "cpu"
        return "gpu-" + re.sub(r"[^a-z0-9]+", "-", self.name().lower()).strip("-")


def jax_gpu():
    """The first JAX GPU, or None."""
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


def find_devices(requested):
    """Devices to measure for --device; a GPU asked for but absent is a UsageError."""
    devices = []
    if requested in ("cpu", "all"):
        devices.append(Device("cpu", torch.device("cpu"), jax.devices("cpu")[0]))
    if requested in ("gpu", "all"):
        torch_gpu = torch.device("cuda") if torch.cuda.is_available() else None
        jax_device = jax_gpu()
        if torch_gpu is not None or jax_device is not None:
            devices.append(Device("gpu", torch_gpu, jax_device))
        elif requested == "gpu":
            raise UsageError("--device gpu: neither PyTorch nor JAX sees a GPU")
    return devices


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions():
    """Installed versions of everything that can change a timing."""
    names = ["torch", "torchvision", "jax", "jaxlib", "flax", "optax", "numpy", "matplotlib"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    for dist in importlib.metadata.distributions():  # jax's CUDA plugins, if any
        name = dist.metadata["Name"] or ""
        if name.lower().startswith(("jax-cuda", "jax_cuda", "jax-rocm")):
            versions[name] = dist.version
    return versions


def nvidia_driver():
    """The NVIDIA driver version from nvidia-smi, or None."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def environment(device):
    """Hardware, threads, versions and settings that a reader needs to trust the numbers."""
    env = {
        "versions": package_versions(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "jax_backend": jax.default_backend(),
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "env": {k: os.environ.get(k) for k in (
            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
            "XLA_PYTHON_CLIENT_MEM_FRACTION", "CUDA_VISIBLE_DEVICES")},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "flax_model": describe_flax_model(device.jax) if device.jax is not None else None,
    }
    if device.kind == "gpu":
        env.update({
            "gpu_name": device.name(),
            "nvidia_driver": nvidia_driver(),
            "torch_cuda": torch.version.cuda,
            "torch_cudnn": torch.backends.cudnn.version() if device.torch is not None else None,
            # torch's fp32 matmuls are full fp32 by default, its cuDNN convolutions may use TF32;
            # XLA's default precision on recent GPUs also uses TF32 for fp32 matmul and conv.
            "torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "torch_cudnn_benchmark": torch.backends.cudnn.benchmark,
            "jax_device_kind": device.jax.device_kind if device.jax is not None else None,
        })
    return env


def describe_callable(function):
    """`module.name` of a function, or `stock` for None (the Flax/lax default)."""
    if function is None:
        return "stock"
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', function)}"


def describe_flax_model(jax_device):
    """Which convolution (and pooling, if the model has that field) the shipped model uses."""
    model = flax_train.create_model(jax_device)
    fields = ("conv_general_dilated", "max_pool")
    return {name: describe_callable(getattr(model, name)) for name in fields
            if hasattr(model, name)}


def memory(device):
    """Peak host RSS of this process, and each framework's peak device memory on a GPU."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"host_peak_rss_bytes": rss if sys.platform == "darwin" else rss * 1024,
           "torch_device_peak_bytes": None, "jax_device_peak_bytes": None}
    if device.kind == "gpu":
        if device.torch is not None:
            out["torch_device_peak_bytes"] = torch.cuda.max_memory_allocated(device.torch)
        if device.jax is not None:
            stats = device.jax.memory_stats() or {}
            out["jax_device_peak_bytes"] = stats.get("peak_bytes_in_use")
    return out


def process_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class OtherLoad:
    """Share of all CPUs that other processes used between start() and stop() (Linux).

    On a shared machine torch's OpenMP threads slow down many times over when another process
    wants a core, XLA's thread pool much less; this number says whether a figure is trustworthy.
    """

    def __init__(self):
        self.start()

    @staticmethod
    def _machine_busy_seconds():
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        ticks = [int(f) for f in fields]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def start(self):
        self.wall, self.busy = time.perf_counter(), self._machine_busy_seconds()
        self.mine = process_cpu_seconds()
        return self

    def stop(self):
        """Other processes' CPU-seconds / (wall seconds x CPUs), or None off Linux."""
        busy = self._machine_busy_seconds()
        if busy is None or self.busy is None:
            return None
        others = (busy - self.busy) - (process_cpu_seconds() - self.mine)
        capacity = (time.perf_counter() - self.wall) * os.cpu_count()
        # /proc/stat counts in 10 ms ticks: clamp the rounding of short windows into [0, 1].
        return min(1.0, max(0.0, others / capacity)) if capacity > 0 else None


QUIET = 0.1  # --wait-quiet: at most this share of the CPUs used by other processes


def wait_for_quiet(limit_seconds):
    """Wait (up to `limit_seconds`) until other processes use < 10 % of the CPUs for 1 s."""
    deadline = time.perf_counter() + limit_seconds
    said = False
    while time.perf_counter() < deadline:
        other_load = OtherLoad()
        time.sleep(1.0)
        load = other_load.stop()
        if load is None or load < QUIET:
            return
        if not said:
            status(f"  waiting for a quiet machine (others use {fmt_share(load)} of the CPUs)")
            said = True
    if said:
        status("  still busy: measuring anyway")


def reset_torch_peak(device):
    if device.kind == "gpu" and device.torch is not None:
        torch.cuda.reset_peak_memory_stats(device.torch)


# ---------------------------------------------------------------------------------------------
# FLOPs, from the model's shapes


def layer_shapes():
    """Each conv and linear layer of the torch model: name, kind, shapes per image, MACs."""
    model = TorchCNN()
    rows, handles = [], []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            def hook(module, inputs, output, name=name):
                in_shape, out_shape = tuple(inputs[0].shape[1:]), tuple(output.shape[1:])
                if isinstance(module, torch.nn.Conv2d):
                    kh, kw = module.kernel_size
                    macs = math.prod(out_shape) * module.in_channels // module.groups * kh * kw
                    kind = "conv"
                else:
                    macs = module.in_features * module.out_features
                    kind = "linear"
                rows.append({"layer": name, "kind": kind, "input_shape": list(in_shape),
                             "output_shape": list(out_shape), "macs_per_image": macs,
                             "forward_flops_per_image": 2 * macs})
            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for handle in handles:
        handle.remove()
    return rows


def flop_counts():
    """FLOPs per image (forward and training) and the per-layer breakdown."""
    layers = layer_shapes()
    forward = sum(row["forward_flops_per_image"] for row in layers)
    counts = {"convention": FLOP_CONVENTION, "forward_per_image": forward,
              "train_per_image": 3 * forward, "layers": layers}
    # XLA's own count for the stock Flax forward (it adds bias, ReLU, pooling): a cross-check.
    try:
        model, batch = flax_model.CNN(), LAYER_BATCH_SIZE
        params = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
        x = jax.ShapeDtypeStruct((batch, 28, 28, 1), jnp.float32)
        cost = jax.jit(model.apply).lower(params, x).cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        counts["xla_cost_analysis_forward_per_image"] = cost["flops"] / batch
    except Exception as err:
        counts["xla_cost_analysis_forward_per_image"] = None
        counts["xla_cost_analysis_error"] = describe_error(err)
    return counts


# ---------------------------------------------------------------------------------------------
# The variants


def synthetic_batch(batch_size, seed=0):
    """Images in [0, 1) and labels 0..9, NCHW float32 / int64 NumPy (the same for every side)."""
    rng = np.random.default_rng([seed, batch_size])
    images = rng.random((batch_size, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, batch_size)
    return images, labels


def flax_uses_custom_conv(jax_device):
    """True when the model the project ships does not use stock lax.conv_general_dilated."""
    return flax_train.create_model(jax_device).conv_general_dilated is not None


class TorchVariant:
    """torch eager NCHW, eager channels_last, or torch.compile over the project's train step."""

    framework = "torch"

    def __init__(self, name, device):
        self.name, self.device = name, device
        self.channels_last = name == "torch-channels-last"
        state = torch_train.create_train_state(TUTORIAL, device.torch)
        model = state.model
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if name == "torch-compile":
            # A fixed shape per batch size, as the tutorial uses: one static graph each.
            model = torch.compile(model, dynamic=False)
        self.state = torch_train.TrainState(model, state.optimizer, device.torch)

    def _input(self, batch_size):
        images, labels = synthetic_batch(batch_size)
        x = torch.from_numpy(images).to(self.device.torch)  # (B, 1, 28, 28)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, torch.from_numpy(labels).to(self.device.torch)

    def train_candidate(self, batch_size):
        batch = self._input(batch_size)

        def call():
            self.state, loss = torch_train.train_step(self.state, batch)
            return loss

        return Candidate(self.name, call, self.device.torch_sync)

    def inference_candidate(self, batch_size):
        x, _ = self._input(batch_size)
        model = self.state.model.eval()  # train_step switches back to train mode

        def call():
            with torch.no_grad():
                return model(x)

        return Candidate(self.name, call, self.device.torch_sync)


class FlaxVariant:
    """The project's Flax model under jax.jit, or the same with stock lax convolutions."""

    framework = "flax"

    def __init__(self, name, device):
        self.name, self.device = name, device
        state = flax_train.create_train_state(jax.random.PRNGKey(TUTORIAL.seed), TUTORIAL,
                                              device.jax)
        if name == "flax-xla-conv":
            # Same params, same optax transform; only the module (its convolution) differs.
            state = state.replace(apply_fn=flax_model.CNN().apply)
        self.state = state
        self.forward = jax.jit(flax_train.logits)  # what evaluation runs, on every variant

    def _input(self, batch_size):
        images, labels = synthetic_batch(batch_size)
        x = np.ascontiguousarray(images.transpose(0, 2, 3, 1))  # (B, 28, 28, 1)
        return jax.device_put((x, labels.astype(np.int32)), self.device.jax)

    def train_candidate(self, batch_size):
        batch = self._input(batch_size)

        def call():
            self.state, metrics = flax_train.train_step(self.state, batch)
            return float(metrics["loss"])  # as the training loop reads it

        return Candidate(self.name, call, self.device.jax_sync)

    def inference_candidate(self, batch_size):
        x, _ = self._input(batch_size)
        return Candidate(self.name, lambda: self.forward(self.state.params, x),
                         self.device.jax_sync)


def build_variants(device, settings):
    """The variants this device can run: {name: variant} and {name: reason} for the rest."""
    built, skipped = {}, {}
    for name in settings.variants:
        framework = name.split("-")[0]
        if framework == "torch" and device.torch is None:
            skipped[name] = "PyTorch does not see this device"
        elif framework == "flax" and device.jax is None:
            skipped[name] = "JAX does not see this device"
        elif name == "flax-xla-conv" and not flax_uses_custom_conv(device.jax):
            skipped[name] = "the project's Flax model already uses lax.conv_general_dilated"
        else:
            built[name] = (TorchVariant if framework == "torch" else FlaxVariant)(name, device)
    return built, skipped


# ---------------------------------------------------------------------------------------------
# Measurements (one function per kind)


def measure_gemm(device, settings):
    """float32 GEMM rate with torch (the peak every % refers to) and with jnp, n³ each."""
    n = GEMM_SIZE[device.kind]
    flops = 2 * n**3
    rng = np.random.default_rng(0)
    a_np, b_np = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    candidates = []
    if device.torch is not None:
        a, b = torch.from_numpy(a_np).to(device.torch), torch.from_numpy(b_np).to(device.torch)
        c = torch.empty_like(a)
        candidates.append(Candidate("torch", lambda: torch.mm(a, b, out=c), device.torch_sync))
    if device.jax is not None:
        a_j, b_j = jax.device_put((a_np, b_np), device.jax)
        matmul = jax.jit(jnp.matmul)
        candidates.append(Candidate("jax", lambda: matmul(a_j, b_j), device.jax_sync))
    timed = time_interleaved(candidates, settings)
    out = {"size": n, "flops_per_call": flops}
    for name, result in timed.items():
        if "error" not in result:
            result["gflop_per_second"] = rates(result["seconds_per_call"], flops / 1e9)
        out[name] = result
    return out


def peak_gflops(gemm):
    """The device's measured peak: torch's float32 GEMM median, else jnp's."""
    for name in ("torch", "jax"):
        if name in gemm and "gflop_per_second" in gemm[name]:
            return gemm[name]["gflop_per_second"]["median"]
    return None


def add_rates(result, images_per_call, flops_per_image, peak):
    """Add images/s, GFLOP/s and % of peak to one timing result (in place)."""
    if "error" in result:
        return result
    per_call = result["seconds_per_call"]
    result["images_per_second"] = rates(per_call, images_per_call)
    result["gflop_per_second"] = rates(per_call, images_per_call * flops_per_image / 1e9)
    result["percent_of_peak"] = (100 * result["gflop_per_second"]["median"] / peak
                                 if peak else None)
    return result


def measure_training(device, variants, settings, flops, peak):
    """Train-step throughput per batch size, all variants interleaved. {batch: {variant: …}}."""
    out = {}
    for batch_size in settings.train_batch_sizes:
        status(f"[{device.kind}] training, batch {batch_size}: {', '.join(variants)}")
        reset_torch_peak(device)
        timed = time_interleaved([v.train_candidate(batch_size) for v in variants.values()],
                                 settings)
        snapshot = memory(device)
        for result in timed.values():
            add_rates(result, batch_size, flops["train_per_image"], peak)
            result["memory"] = snapshot
        out[batch_size] = timed
        status(f"[{device.kind}]   " + summary(timed, "images_per_second", "images/s"))
    return out


def measure_inference(device, variants, settings, flops, peak):
    """Forward-only throughput per batch size (batch 1 gives latency). {batch: {variant: …}}."""
    out = {}
    for batch_size in settings.inference_batch_sizes:
        status(f"[{device.kind}] inference, batch {batch_size}: {', '.join(variants)}")
        reset_torch_peak(device)
        timed = time_interleaved([v.inference_candidate(batch_size) for v in variants.values()],
                                 settings)
        snapshot = memory(device)
        for result in timed.values():
            add_rates(result, batch_size, flops["forward_per_image"], peak)
            result["memory"] = snapshot
        out[batch_size] = timed
        status(f"[{device.kind}]   " + summary(timed, "images_per_second", "images/s"))
    return out


def latency(inference):
    """Single-image latency (ms) per variant, from the batch-1 inference windows."""
    out = {}
    for name, result in inference.get(1, {}).items():
        if "error" not in result:
            out[name] = {k: 1e3 * result["seconds_per_call"][k] for k in ("median", "min", "max")}
    return out


def summary(timed, key, unit):
    """`a 123 images/s, b 45 images/s` for a status line."""
    parts = []
    for name, result in timed.items():
        value = "failed" if "error" in result else f"{result[key]['median']:.0f} {unit}"
        parts.append(f"{name} {value}")
    return ", ".join(parts)


def torch_layer_candidates(row, device, batch_size, module):
    """torch forward and forward+backward of one layer (NCHW input)."""
    x = torch.rand((batch_size, *row["input_shape"]), device=device.torch)
    grad = torch.rand((batch_size, *row["output_shape"]), device=device.torch)
    needs_input_grad = row["layer"] != "layer.0"  # the image needs no gradient in training
    x_grad = x.clone().requires_grad_(needs_input_grad)

    def forward():
        with torch.no_grad():
            return module(x)

    def forward_backward():
        module.zero_grad(set_to_none=True)
        module(x_grad).backward(grad)

    return (Candidate("torch", forward, device.torch_sync),
            Candidate("torch", forward_backward, device.torch_sync))


def flax_layer_candidates(row, device, batch_size, name, conv_general_dilated):
    """Flax forward and forward+backward (vjp) of one layer (NHWC input), jitted."""
    if row["kind"] == "conv":
        c_in, h, w = row["input_shape"]
        c_out, h_out, w_out = row["output_shape"]
        extra = {} if conv_general_dilated is None else {
            "conv_general_dilated": conv_general_dilated}
        module = linen.Conv(c_out, kernel_size=(5, 5), padding="VALID", **extra)
        x_shape, y_shape = (batch_size, h, w, c_in), (batch_size, h_out, w_out, c_out)
    else:
        module = linen.Dense(row["output_shape"][0])
        x_shape, y_shape = (batch_size, *row["input_shape"]), (batch_size, *row["output_shape"])
    key_x, key_g, key_p = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.device_put(jax.random.uniform(key_x, x_shape), device.jax)
    grad = jax.device_put(jax.random.uniform(key_g, y_shape), device.jax)
    params = jax.device_put(module.init(key_p, x[:1]), device.jax)
    needs_input_grad = row["layer"] != "layer.0"

    forward = jax.jit(module.apply)

    @jax.jit
    def forward_backward(params, x, grad):
        if needs_input_grad:
            y, vjp = jax.vjp(module.apply, params, x)
        else:
            y, vjp = jax.vjp(lambda p: module.apply(p, x), params)
        return y, vjp(grad)  # y too: a linear layer's vjp does not need it, XLA would drop it

    return (Candidate(name, lambda: forward(params, x), device.jax_sync),
            Candidate(name, lambda: forward_backward(params, x, grad), device.jax_sync))


def measure_layers(device, settings, flops):
    """Each conv/linear layer alone at one batch size: torch vs Flax's conv vs stock lax."""
    batch_size = settings.layer_batch_size
    torch_model = TorchCNN().to(device.torch) if device.torch is not None else None
    modules = dict(torch_model.named_modules()) if torch_model is not None else {}
    custom = (flax_train.create_model(device.jax).conv_general_dilated
              if device.jax is not None else None)
    rows = []
    for row in flops["layers"]:
        status(f"[{device.kind}] layer {row['layer']} ({row['kind']}), batch {batch_size}")
        forward, forward_backward = [], []
        if device.torch is not None:
            pair = torch_layer_candidates(row, device, batch_size, modules[row["layer"]])
            forward.append(pair[0])
            forward_backward.append(pair[1])
        if device.jax is not None:
            impls = {"flax": custom}
            if row["kind"] == "conv" and custom is not None:
                impls["lax"] = None  # stock lax.conv_general_dilated beside the project's
            for name, impl in impls.items():
                pair = flax_layer_candidates(row, device, batch_size, name, impl)
                forward.append(pair[0])
                forward_backward.append(pair[1])
        candidates = ([dataclasses.replace(c, name=f"{c.name}/forward") for c in forward]
                      + [dataclasses.replace(c, name=f"{c.name}/forward_backward")
                         for c in forward_backward])
        timed = time_interleaved(candidates, settings)
        entry = {**row, "forward_ms": {}, "forward_backward_ms": {}, "first_call_seconds": {},
                 "other_load": max(windows_load(timed.values()), default=None)}
        for name, result in timed.items():
            impl, pass_ = name.split("/")
            if "error" in result:
                entry[f"{pass_}_ms"][impl] = {"error": result["error"]}
                continue
            per_call = result["seconds_per_call"]
            entry[f"{pass_}_ms"][impl] = {k: 1e3 * per_call[k] for k in ("median", "min", "max")}
            entry["first_call_seconds"][f"{impl}/{pass_}"] = result["first_call_seconds"]
        entry["flax_convolution"] = (describe_callable(custom) if row["kind"] == "conv"
                                     else "linen.Dense")
        rows.append(entry)
    return {"batch_size": batch_size,
            "note": "layer.0 gets no input gradient (as in training); the others do",
            "rows": rows}


# ---------------------------------------------------------------------------------------------
# Real data: one epoch, and time to accuracy


class Trainer:
    """What the real-data runs need of a framework; `move` turns loader tensors into a batch."""

    def __init__(self, device, config, move):
        self.device, self.config, self.move = device, config, move

    def host_batches(self, split, epoch, batch_size):
        """The in-memory loader's batches of one epoch, moved to the device."""
        for x, y in loaders.train_batches(split, seed=self.config.seed, epoch=epoch,
                                          batch_size=batch_size, loader="memory"):
            yield self.move(x, y)

    def accuracy(self, state, resident):
        """Test accuracy over a device-resident split, in file order."""
        order = np.arange(len(resident[1]))
        return self.evaluate(state, self.resident_batches(resident, order,
                                                          loaders.EVAL_BATCH_SIZE))["accuracy"]


class TorchTrainer(Trainer):
    """The torch side (the project's functions, eager NCHW)."""

    framework = "torch"
    evaluate = staticmethod(torch_train.evaluate)

    def __init__(self, device, config):
        super().__init__(device, config, torch_train.to_batch(device.torch))

    def new_state(self):
        return torch_train.create_train_state(self.config, self.device.torch)

    def scratch_state(self, _state):
        """A state to warm up on: torch's step updates in place, so a separate one."""
        return self.new_state()

    def step(self, state, batch):
        return torch_train.train_step(state, batch)

    def resident(self, split):
        images, labels = split
        return (torch.from_numpy(images).to(self.device.torch),
                torch.from_numpy(labels).to(self.device.torch))

    def resident_batches(self, resident, order, batch_size):
        images, labels = resident
        order = torch.from_numpy(order).to(self.device.torch)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            # ToTensor's arithmetic: uint8 -> float32, / 255.
            yield images[index].unsqueeze(1).to(torch.float32).div(255), labels[index]

    def sync(self, _state):
        self.device.torch_sync()


class FlaxTrainer(Trainer):
    """The Flax side (the project's model and functions, NHWC)."""

    framework = "flax"
    evaluate = staticmethod(flax_train.evaluate)

    def __init__(self, device, config):
        super().__init__(device, config, flax_train.to_batch(device.jax))

        @jax.jit
        def gather(images, labels, index):
            x = images[index].astype(jnp.float32)[..., None] / 255  # (B, 28, 28, 1)
            return x, labels[index]

        self.gather = gather

    def new_state(self):
        return flax_train.create_train_state(jax.random.PRNGKey(self.config.seed), self.config,
                                             self.device.jax)

    @staticmethod
    def scratch_state(state):
        """The state itself: the step is pure, and jit's cache is keyed on this state's apply_fn
        (a new state would compile again)."""
        return state

    def step(self, state, batch):
        state, metrics = flax_train.train_step(state, batch)
        return state, float(metrics["loss"])  # read every step, as the training loop does

    def resident(self, split):
        images, labels = split
        return jax.device_put((images, labels.astype(np.int32)), self.device.jax)

    def resident_batches(self, resident, order, batch_size):
        order = jax.device_put(order.astype(np.int32), self.device.jax)
        for start in range(0, order.shape[0], batch_size):
            yield self.gather(*resident, order[start:start + batch_size])

    @staticmethod
    def sync(state):
        jax.block_until_ready(state)


def trainers(device, config):
    """One trainer per framework this device can run."""
    out = []
    if device.torch is not None:
        out.append(TorchTrainer(device, config))
    if device.jax is not None:
        out.append(FlaxTrainer(device, config))
    return out


def warm_up_shapes(trainer, state, batches):
    """One step per batch, results dropped, so compile/jit stays out of the timed run."""
    start = time.perf_counter()
    for batch in batches:
        scratch, _ = trainer.step(trainer.scratch_state(state), batch)
        trainer.sync(scratch)
    return time.perf_counter() - start


def measure_epoch(device, splits, settings, config=TUTORIAL):
    """One real epoch (in-memory loader, tutorial settings) per framework, then test accuracy."""
    train_split, test_split = splits
    batch_size = config.batch_size
    num_steps = loaders.steps_per_epoch(len(train_split[1]), batch_size)
    if settings.epoch_max_steps is not None:
        num_steps = min(num_steps, settings.epoch_max_steps)
    sizes = {batch_size}
    if num_steps * batch_size >= len(train_split[1]):
        sizes.add(len(train_split[1]) % batch_size or batch_size)  # the partial last batch
    out = {}
    for trainer in trainers(device, config):
        status(f"[{device.kind}] real epoch, {trainer.framework} "
               f"({DEFAULT_VARIANT[trainer.framework]}), {num_steps} steps")
        state = trainer.new_state()
        warmup = warm_up_shapes(trainer, state, [synthetic_to(trainer, size) for size in sizes])
        images = 0
        trainer.sync(state)
        wait_for_quiet(settings.wait_quiet)
        other_load = OtherLoad()
        start = time.perf_counter()
        for batch in itertools.islice(trainer.host_batches(train_split, 0, batch_size),
                                      num_steps):
            state, _ = trainer.step(state, batch)
            images += batch[1].shape[0]
        trainer.sync(state)
        seconds, load = time.perf_counter() - start, other_load.stop()
        start = time.perf_counter()
        accuracy = trainer.accuracy(state, trainer.resident(test_split))
        out[DEFAULT_VARIANT[trainer.framework]] = {
            "framework": trainer.framework, "steps": num_steps, "images": images,
            "complete_epoch": images == len(train_split[1]), "seconds": seconds,
            "images_per_second": images / seconds, "test_accuracy": accuracy,
            "warmup_seconds": warmup, "eval_seconds": time.perf_counter() - start,
            "other_load": load, "memory": memory(device)}
        status(f"[{device.kind}]   {trainer.framework}: {seconds:.1f} s, "
               f"{images / seconds:.0f} images/s, test accuracy {100 * accuracy:.2f} %")
    return out


def synthetic_to(trainer, batch_size):
    """A synthetic batch as the loader gives it, moved like real batches (for warm-up)."""
    images, labels = synthetic_batch(batch_size)
    return trainer.move(torch.from_numpy(images), torch.from_numpy(labels))


def measure_time_to_accuracy(device, splits, config=TUTORIAL):
    """Training set resident on the device; seconds of training until >= 98.5 % test accuracy."""
    train_split, test_split = splits
    batch_size, max_epochs = config.batch_size, config.epochs
    out = {}
    for trainer in trainers(device, config):
        status(f"[{device.kind}] time to {100 * TARGET_ACCURACY:.1f} %, {trainer.framework}")
        train, test = trainer.resident(train_split), trainer.resident(test_split)
        order = loaders.epoch_permutation(config.seed, 0, len(train_split[1]))
        last = len(order) % batch_size or batch_size  # the partial last batch
        state = trainer.new_state()
        warmup = warm_up_shapes(trainer, state, [
            *trainer.resident_batches(train, order[:batch_size], batch_size),
            *trainer.resident_batches(train, order[-last:], batch_size)])
        seconds, epochs, reached = 0.0, [], None
        other_load = OtherLoad()
        for epoch in range(max_epochs):
            order = loaders.epoch_permutation(config.seed, epoch, len(train_split[1]))
            trainer.sync(state)
            start = time.perf_counter()
            for batch in trainer.resident_batches(train, order, batch_size):
                state, _ = trainer.step(state, batch)
            trainer.sync(state)
            seconds += time.perf_counter() - start
            accuracy = trainer.accuracy(state, test)  # not timed
            epochs.append({"epoch": epoch + 1, "train_seconds": seconds,
                           "test_accuracy": accuracy})
            status(f"[{device.kind}]   epoch {epoch + 1}: {seconds:.1f} s, "
                   f"test accuracy {100 * accuracy:.2f} %")
            if accuracy >= TARGET_ACCURACY:
                reached = epoch + 1
                break
        out[DEFAULT_VARIANT[trainer.framework]] = {
            "framework": trainer.framework, "target_accuracy": TARGET_ACCURACY,
            "reached": reached is not None, "epochs_to_target": reached,
            "seconds_to_target": seconds if reached else None, "epochs": epochs,
            "max_epochs": max_epochs, "warmup_seconds": warmup,
            "other_load": other_load.stop(), "memory": memory(device)}
    return out


# ---------------------------------------------------------------------------------------------
# One device, start to end


def load_splits(settings):
    """(train, test) arrays of real MNIST, or a reason to skip (--quick never downloads)."""
    try:
        root = data.prepare_data(None, sources=[] if settings.quick else None,
                                 progress=not settings.quick)
    except DataError as err:
        return None, str(err)
    return (data.load_arrays(root, train=True), data.load_arrays(root, train=False)), None


def guarded(results, key, function, *args):
    """results[key] = function(*args); an exception becomes {"error": …} and the run goes on."""
    try:
        results[key] = function(*args)
    except Exception as err:
        results[key] = {"error": describe_error(err)}
        status(f"{key} failed: {results[key]['error']}")
        traceback.print_exc(file=sys.stderr)


def run_device(device, settings, splits, splits_problem, save):
    """All measurements on one device; `save(results)` after each section; returns results."""
    started, cpu_started = time.perf_counter(), process_cpu_seconds()
    results = {"schema": SCHEMA, "device": device.slug(), "device_name": device.name(),
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                   timespec="seconds"),
               "command": " ".join([PROG, *sys.argv[1:]]), "quick": settings.quick,
               "complete": False,
               "environment": environment(device),
               "method": {"timing": TIMING_METHOD, "repeats": settings.repeats,
                          "window_seconds": settings.window_seconds,
                          "min_calls_per_window": settings.min_steps,
                          "warmup_calls": settings.warmup_steps,
                          "wait_quiet_seconds": settings.wait_quiet,
                          "train_step": "the project's train_step with the loss read back to the "
                                        "host each step, synthetic data already on the device",
                          "inference": "logits only (no loss), eval mode / no_grad, jitted apply",
                          "ratio": f"variant median / {BASELINE} median"}}
    status(f"[{device.kind}] {device.name()}: FLOP count and peak GEMM")
    flops = flop_counts()
    results["flops"] = flops

    def section(key, function, *args):
        guarded(results, key, function, *args)
        results["wall_seconds"] = time.perf_counter() - started
        save(jsonable(results))

    section("peak_gemm", measure_gemm, device, settings)
    peak = peak_gflops(results["peak_gemm"])
    results["peak_gflop_per_second"] = peak
    if device.torch is not None:
        torch.manual_seed(0)
    variants, skipped = build_variants(device, settings)
    results["variants"] = {name: {"framework": v.framework, "status": "ok",
                                  "description": VARIANTS[name]} for name, v in variants.items()}
    results["variants"].update({name: {"framework": name.split("-")[0], "status": "skipped",
                                       "description": VARIANTS[name], "reason": reason}
                                for name, reason in skipped.items()})
    section("train", measure_training, device, variants, settings, flops, peak)
    section("inference", measure_inference, device, variants, settings, flops, peak)
    if "error" not in results["inference"]:
        results["latency_ms"] = latency(results["inference"])
    if settings.layers:
        section("layers", measure_layers, device, settings, flops)
    else:
        results["layers"] = {"skipped": "--no-layers"}
    if not settings.epoch:
        results["epoch"] = {"skipped": "--no-epoch"}
    elif splits is None:
        results["epoch"] = {"skipped": splits_problem}
    else:
        section("epoch", measure_epoch, device, splits, settings)
    if not settings.time_to_accuracy:
        results["time_to_accuracy"] = {"skipped": "run with --time-to-accuracy"}
    elif splits is None:
        results["time_to_accuracy"] = {"skipped": splits_problem}
    else:
        section("time_to_accuracy", measure_time_to_accuracy, device, splits)
    results["memory"] = memory(device)
    results["environment"]["load_average_end"] = (list(os.getloadavg())
                                                  if hasattr(os, "getloadavg") else None)
    # CPU seconds this process got; far below wall x threads means the machine was shared.
    results["environment"]["process_cpu_seconds"] = process_cpu_seconds() - cpu_started
    results["wall_seconds"] = time.perf_counter() - started
    results["complete"] = True
    return jsonable(results)


def jsonable(value):
    """Results with int keys made strings and NumPy scalars made Python numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------------
# Reports: Markdown and PNG


def fmt_rate(stats):
    return f"{stats['median']:,.0f} ({stats['min']:,.0f}–{stats['max']:,.0f})"


def fmt_ms(stats):
    if "error" in stats:
        return "failed"
    return f"{stats['median']:.3g} ({stats['min']:.3g}–{stats['max']:.3g})"


def ratio(section, batch, name, key="images_per_second"):
    """variant median / baseline median, or '' when either is missing."""
    entry, base = section.get(batch, {}).get(name, {}), section.get(batch, {}).get(BASELINE, {})
    if key not in entry or key not in base:
        return ""
    return f"{entry[key]['median'] / base[key]['median']:.2f}×"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


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


def section_ok(results, key):
    """True when a measured section is present and did not fail."""
    return isinstance(results.get(key), dict) and "error" not in results[key]


def header_lines(results):
    """Title, machine, versions, load, the peak GEMM and the variants."""
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
    lines = [f"# MNIST CNN benchmark: {results['device_name']}", "",
             f"{results['created']}, `{results['command']}`. torch {versions.get('torch')}, "
             f"jax {versions.get('jax')}, flax {versions.get('flax')}, optax "
             f"{versions.get('optax')}; {machine}. {load}.", "",
             f"Median over {results['method']['repeats']} interleaved windows (min–max in "
             f"brackets); first calls (compile/jit) excluded and listed below. × {BASELINE} = "
             f"variant median / {BASELINE} median.", ""]
    if results["device"] != "cpu":
        lines += [f"Precision: torch matmul TF32 {env.get('torch_matmul_allow_tf32')}, cuDNN conv "
                  f"TF32 {env.get('torch_cudnn_allow_tf32')}; JAX default matmul precision "
                  f"{env.get('jax_default_matmul_precision')} (None: XLA's default, which may use "
                  f"TF32 for float32 dots and convolutions on this GPU). Library defaults, "
                  f"unchanged.", ""]
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
    flax_model = env.get("flax_model")
    if flax_model:
        lines.append("- The shipped Flax model uses: " + ", ".join(
            f"{k} = `{v}`" for k, v in flax_model.items()) + ".")
    return lines + [""]


BUSY_WARNING = 0.05  # other processes above this share of the CPUs: the figure is suspect


def fmt_share(value):
    return "n/a" if value is None else f"{100 * value:.0f} %"


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


def markdown(results):
    """The results as Markdown: throughput with ratios, first calls, layers, epoch, memory."""
    names = [n for n, v in results.get("variants", {}).items() if v["status"] == "ok"]
    parts = header_lines(results)
    parts += training_lines(results, names)
    parts += inference_lines(results, names)
    parts += first_call_table(results, names)
    parts += layers_table(results.get("layers", {}))
    parts += real_data_tables(results)
    parts += memory_lines(results)
    parts += error_lines(results)
    if not results.get("complete"):
        parts.append("**Interrupted: these are the sections finished before the stop.**")
    parts.append(f"Whole run on this device: {results.get('wall_seconds', 0):.0f} s.")
    return "\n".join(parts) + "\n"


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


def memory_lines(results):
    """Peak host RSS, and per framework the peak device memory of each training batch size."""
    mem = results.get("memory")
    if not mem:
        return []
    lines = ["## Memory", "", f"Peak host RSS of the whole run: "
             f"{mem['host_peak_rss_bytes'] / 2**20:,.0f} MiB.", ""]
    train = results.get("train", {})
    if "error" in train:
        train = {}
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


def fmt_load(load):
    return "/".join(f"{x:.2f}" for x in load) if load else "n/a"


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
    impls = []
    for row in layers["rows"]:
        for impl in row["forward_ms"]:
            if impl not in impls:
                impls.append(impl)
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
            "flax = the Flax model's own convolution; lax = stock `lax.conv_general_dilated` "
            f"(listed only when they differ). {layers['note']}.", "", table(header, rows), ""]


def real_data_tables(results):
    """The real epoch and, when run, time to accuracy."""
    parts = []
    epoch = results.get("epoch", {})
    if "skipped" in epoch or "error" in epoch:
        reason = epoch.get("skipped") or epoch.get("error")
        parts += ["## One real MNIST epoch", "", f"Not run: {reason}", ""]
    elif epoch:
        rows = [[name, e["steps"], f"{e['seconds']:.1f}", f"{e['images_per_second']:,.0f}",
                 f"{100 * e['test_accuracy']:.2f} %", f"{e['warmup_seconds']:.1f}",
                 fmt_share(e.get("other_load"))] for name, e in epoch.items()]
        complete = all(e["complete_epoch"] for e in epoch.values())
        parts += ["## One real MNIST epoch (in-memory loader, batch 256)" if complete else
                  "## Real MNIST, first steps of epoch 1 (--quick)", "",
                  table(["variant", "steps", "seconds", "images/s", "test accuracy after",
                         "warm-up s (excluded)", "others' CPU"], rows), ""]
    tta = results.get("time_to_accuracy", {})
    if tta and "skipped" not in tta and "error" not in tta:
        rows = [[name, f"{t['seconds_to_target']:.1f}" if t["reached"] else "not reached",
                 t["epochs_to_target"] or f"> {t['max_epochs']}",
                 f"{100 * t['epochs'][-1]['test_accuracy']:.2f} %", f"{t['warmup_seconds']:.1f}",
                 fmt_share(t.get("other_load"))] for name, t in tta.items()]
        parts += [f"## Time to {100 * TARGET_ACCURACY:.1f} % test accuracy (data resident on "
                  f"the device, tutorial settings; evaluation not timed)", "",
                  table(["variant", "training seconds", "epochs", "last accuracy",
                         "warm-up s (excluded)", "others' CPU"], rows), ""]
    elif "error" in tta:
        parts += ["## Time to accuracy", "", f"Failed: {tta['error']}", ""]
    return parts


def plot(results, path):
    """Bar charts of training and inference images/s per batch size (min–max as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, v in results.get("variants", {}).items() if v["status"] == "ok"]
    sections = [(key, title) for key, title in (("train", "training step"),
                                                ("inference", "inference (logits)"))
                if isinstance(results.get(key), dict) and "error" not in results[key]]
    fig, axes = plt.subplots(1, max(len(sections), 1), figsize=(12, 4.5), dpi=100, squeeze=False)
    width = 0.8 / max(len(names), 1)
    for ax, (key, title) in zip(axes[0], sections, strict=False):
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


def write_json(results, out_dir):
    """<out_dir>/<device>.json, atomically."""
    path = out_dir / f"{results['device']}.json"
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")


def write_reports(results, out_dir):
    """<out_dir>/<device>.md and .png (no PNG without matplotlib); returns the Markdown."""
    text = markdown(results)
    write_text_atomic(out_dir / f"{results['device']}.md", text)
    try:
        plot(results, out_dir / f"{results['device']}.png")
    except ImportError as err:  # a bare GPU image may lack matplotlib: render later, --render
        status(f"no PNG ({describe_error(err)}); run `{PROG} --render <json>` where it is")
    return text


# ---------------------------------------------------------------------------------------------
# Command line


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad value in one line (`prog: error: …`), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def int_list(text):
    """`64,256,1024` -> (64, 256, 1024); each at least 1."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of whole numbers")
    return tuple(dict.fromkeys(positive_int(item) for item in items))


def variant_list(text):
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in VARIANTS]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"unknown variant {unknown[0]!r} (choose from {', '.join(VARIANTS)})" if unknown
            else "expected a comma-separated list of variants")
    return tuple(dict.fromkeys(items))


def build_parser():
    parser = Parser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run for CI (seconds): batch 64, inference batches 1 and 256, "
                             "2 repeats of 2 calls, no torch.compile, layers at batch 64, the "
                             "real epoch cut to 2 steps and only if MNIST is already prepared")
    parser.add_argument("--device", choices=("cpu", "gpu", "cuda", "all"), default="all",
                        help="where to measure; all = the CPU and the GPU when there is one "
                             "(default: %(default)s)")
    parser.add_argument("--batch-sizes", type=int_list, default=None, metavar="N,N,...",
                        help="training batch sizes (default: "
                             f"{','.join(map(str, TRAIN_BATCH_SIZES))}; --quick: 64)")
    parser.add_argument("--inference-batch-sizes", type=int_list, default=None,
                        metavar="N,N,...",
                        help="inference batch sizes; batch 1 also gives the latency (default: "
                             f"{','.join(map(str, INFERENCE_BATCH_SIZES))}; --quick: 1,256)")
    parser.add_argument("--variants", type=variant_list, default=None, metavar="V,V,...",
                        help=f"which variants (default: {','.join(VARIANTS)}; --quick: all but "
                             "torch-compile); flax-xla-conv runs only when the project's Flax "
                             "model has a convolution of its own")
    parser.add_argument("--repeats", type=positive_int, default=None, metavar="N",
                        help="timed windows per measurement (default: 5; --quick: 2)")
    parser.add_argument("--window-seconds", type=non_negative_float, default=None, metavar="S",
                        help="a timed window lasts at least S seconds (default: 0.5; --quick: 0)")
    parser.add_argument("--min-steps", type=positive_int, default=None, metavar="N",
                        help="a timed window holds at least N calls (default: 1; --quick: 2)")
    parser.add_argument("--wait-quiet", type=non_negative_float, default=0.0, metavar="S",
                        help="before each measurement wait up to S seconds until other "
                             "processes use < 10 %% of the CPUs (for shared machines; default: "
                             "%(default)s)")
    parser.add_argument("--out-dir", default="benchmarks/results", metavar="DIR",
                        help="where <device>.json, .md and .png go (default: %(default)s)")
    parser.add_argument("--no-layers", dest="layers", action="store_false",
                        help="skip the per-layer timings")
    parser.add_argument("--no-epoch", dest="epoch", action="store_false",
                        help="skip the real-data MNIST epoch")
    parser.add_argument("--render", metavar="JSON",
                        help="measure nothing: rewrite the .md and .png beside a results JSON")
    parser.add_argument("--time-to-accuracy", action="store_true",
                        help=f"also train on the device-resident training set (tutorial "
                             f"settings, up to {TUTORIAL.epochs} epochs) until "
                             f"{100 * TARGET_ACCURACY:.1f} %% test accuracy; slow on a CPU")
    return parser


def parse_settings(argv=None):
    """Command line -> Settings (a bad value: one line on stderr, exit status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quick = args.quick

    def pick(value, normal, in_quick):
        return value if value is not None else (in_quick if quick else normal)

    out_dir = Path(args.out_dir)
    try:
        if not args.render:
            out_dir.mkdir(parents=True, exist_ok=True)
            tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe-").close()
    except OSError as err:
        parser.error(f"--out-dir {args.out_dir}: cannot write there ({err.strerror or err})")
    return Settings(
        devices=("gpu",) if args.device == "cuda" else (args.device,),
        variants=pick(args.variants, tuple(VARIANTS),
                      tuple(v for v in VARIANTS if v != "torch-compile")),
        train_batch_sizes=pick(args.batch_sizes, TRAIN_BATCH_SIZES, (64,)),
        inference_batch_sizes=pick(args.inference_batch_sizes, INFERENCE_BATCH_SIZES, (1, 256)),
        layer_batch_size=64 if quick else LAYER_BATCH_SIZE,
        repeats=pick(args.repeats, 5, 2),
        window_seconds=pick(args.window_seconds, 0.5, 0.0),
        min_steps=pick(args.min_steps, 1, 2),
        warmup_steps=1,
        wait_quiet=args.wait_quiet,
        layers=args.layers,
        epoch=args.epoch,
        epoch_max_steps=2 if quick else None,
        time_to_accuracy=args.time_to_accuracy,
        quick=quick,
        out_dir=out_dir,
        render=args.render,
    )


def fresh_compile_caches():
    """Point torch.compile's caches at a new temp dir, so first-call times are cold compiles."""
    cache = tempfile.mkdtemp(prefix="bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    return cache


def render(json_path):
    """--render: rewrite the .md and .png beside a results JSON; print the Markdown."""
    path = Path(json_path)
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"--render {json_path}: cannot read results ({err})") from None
    if results.get("schema") != SCHEMA:
        raise UsageError(f"--render {json_path}: not a {SCHEMA} results file")
    print(write_reports(results, path.parent))


def stop_on_sigterm(signum, frame):
    """SIGTERM (as from `timeout`) stops the run like Ctrl-C: finished sections are kept."""
    raise KeyboardInterrupt


def main(argv=None):
    settings = parse_settings(argv)
    if settings.render:
        return render(settings.render)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    devices = find_devices(settings.devices[0])
    cache = fresh_compile_caches()
    splits, splits_problem = (None, "--no-epoch")
    if settings.epoch or settings.time_to_accuracy:
        splits, splits_problem = load_splits(settings)
    latest = {}  # the last saved results, rendered if the run is interrupted

    def save(results):
        latest["results"] = results
        write_json(results, settings.out_dir)

    try:
        for device in devices:
            latest.clear()
            results = run_device(device, settings, splits, splits_problem, save)
            write_json(results, settings.out_dir)
            text = write_reports(results, settings.out_dir)
            status(f"wrote {settings.out_dir / results['device']}.{{json,md,png}} "
                   f"({results['wall_seconds']:.0f} s)")
            print(text)
    except KeyboardInterrupt:
        if "results" in latest:
            write_reports(latest["results"], settings.out_dir)
            status(f"interrupted: partial results in {settings.out_dir}")
        raise SystemExit(130) from None
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    run_cli(main, prog=PROG)

"""The devices to measure, as both engines place work on them, and what a reader needs to trust
the numbers: machine, versions, threads, settings, load and memory."""

import dataclasses
import importlib.metadata
import os
import platform
import re
import resource
import sys
from pathlib import Path

import jax
import torch

from flax_impl import backend as flax_backend
from mnist_common.allocator import keep_freed_memory
from mnist_common.errors import UsageError
from torch_impl import backend as torch_backend

PACKAGES = ("torch", "torchvision", "jax", "jaxlib", "flax", "optax", "numpy", "matplotlib")
ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
               "XLA_PYTHON_CLIENT_MEM_FRACTION", "CUDA_VISIBLE_DEVICES", "GLIBC_TUNABLES")


@dataclasses.dataclass
class Device:
    """One device and each engine's placement on it (either may be absent on a GPU)."""

    kind: str  # "cpu" or "gpu"
    torch: object  # torch_impl.backend.Placement or None
    flax: object  # flax_impl.backend.Placement or None

    def torch_sync(self, _result=None):
        if self.torch is not None and self.torch.device.type == "cuda":
            torch.cuda.synchronize(self.torch.device)

    @staticmethod
    def jax_sync(result):
        jax.block_until_ready(result)

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
    devices = []
    if requested in ("cpu", "all"):
        devices.append(Device("cpu", _placement(torch_backend, "cpu", precision),
                              _placement(flax_backend, "cpu", precision)))
    if requested in ("gpu", "all"):
        gpu = Device("gpu", _placement(torch_backend, "cuda", precision),
                     _placement(flax_backend, "gpu", precision))
        if gpu.torch is not None or gpu.flax is not None:
            devices.append(gpu)
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
        "jax_backend": jax.default_backend(),
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
            "torch_cudnn_benchmark": torch.backends.cudnn.benchmark,
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


def reset_torch_peak(device):
    if device.kind == "gpu" and device.torch is not None:
        torch.cuda.reset_peak_memory_stats(device.torch.device)

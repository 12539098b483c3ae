"""The isolated measurements: peak GEMM, the engines' train step and logits per batch size."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.environment import memory, reset_torch_peak
from benchmarks.timing import Candidate, rates, status, time_interleaved
from benchmarks.variants import inference_candidate, train_candidate

GEMM_SIZE = {"cpu": 2048, "gpu": 8192}


def measure_gemm(device, settings):
    """float32 GEMM rate with torch (the peak every % refers to) and with jnp, n³ each."""
    n = GEMM_SIZE[device.kind]
    flops = 2 * n**3
    rng = np.random.default_rng(0)
    a_np, b_np = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    candidates = []
    if device.torch is not None:
        a, b = (torch.from_numpy(m).to(device.torch.device) for m in (a_np, b_np))
        c = torch.empty_like(a)
        candidates.append(Candidate("torch", lambda: torch.mm(a, b, out=c), device.torch_sync))
    if device.flax is not None:
        a_j, b_j = jax.device_put((a_np, b_np), device.flax.device)
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


def summary(timed, key, unit):
    """`a 123 images/s, b 45 images/s` for a status line."""
    parts = []
    for name, result in timed.items():
        value = "failed" if "error" in result else f"{result[key]['median']:.0f} {unit}"
        parts.append(f"{name} {value}")
    return ", ".join(parts)


def _per_batch(device, variants, settings, kind, flops, peak):
    """{batch: {variant: timing with rates}} of train steps or logits, variants interleaved."""
    if kind == "train":
        batch_sizes, candidate, flops_key = settings.train_batch_sizes, train_candidate, "train"
    else:
        batch_sizes, candidate, flops_key = (settings.inference_batch_sizes, inference_candidate,
                                             "forward")
    out = {}
    for batch_size in batch_sizes:
        label = "training" if kind == "train" else "inference"
        status(f"[{device.kind}] {label}, batch {batch_size}: {', '.join(variants)}")
        reset_torch_peak(device)
        timed = time_interleaved([candidate(v, batch_size) for v in variants.values()],
                                 settings)
        snapshot = memory(device)
        for result in timed.values():
            add_rates(result, batch_size, flops[f"{flops_key}_per_image"], peak)
            result["memory"] = snapshot
        out[batch_size] = timed
        status(f"[{device.kind}]   " + summary(timed, "images_per_second", "images/s"))
    return out


def measure_training(device, variants, settings, flops, peak):
    """Train-step throughput per batch size, all variants interleaved. {batch: {variant: …}}."""
    return _per_batch(device, variants, settings, "train", flops, peak)


def measure_inference(device, variants, settings, flops, peak):
    """Logits throughput per batch size (batch 1 gives latency). {batch: {variant: …}}."""
    return _per_batch(device, variants, settings, "inference", flops, peak)


def latency(inference):
    """Single-image latency (ms) per variant, from the batch-1 inference windows."""
    out = {}
    for name, result in inference.get(1, {}).items():
        if "error" not in result:
            out[name] = {k: 1e3 * result["seconds_per_call"][k] for k in ("median", "min", "max")}
    return out

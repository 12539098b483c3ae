"""Side-by-side speed of the tutorial MNIST CNN in PyTorch and in Flax, timed on the engines the
CLIs run (`torch_impl.backend`, `flax_impl.backend`). Entry point: `python benchmarks/run.py`;
four jobs:

- harness: `cli` (the command line; torch and JAX are imported only after it), `session` (a
  run: each device start to end, its results published; `--render`, `run.py scaling`),
  `harness` (timing, the files it may replace, the one process runner, signals, the devices
  and what ran where); this file: the variants, the tutorial's settings, the target accuracy;
- isolated measurements: `isolated` (variants, FLOPs, peak GEMM, train step, logits, layers);
- real training: `training` (the CLIs' loop, the training CLIs as processes, scaling);
- report: `report` (Markdown and PNG).
"""

import platform
from pathlib import Path

from mnist_common.config import Config

PROG = "benchmarks/run.py"
REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"  # wherever it is run from
TUTORIAL = Config()  # batch 256, Adam 2e-4, seed 0, 10 epochs
TARGET_ACCURACY = 0.985  # the tutorial reports 98.53 % after 10 epochs
VARIANTS = {
    "torch-eager": "torch_impl.backend's state, train_step and logits, eager, NCHW",
    "torch-channels-last": "the same with model and input channels_last (the engine's on the CPU)",
    "torch-compile": "the same with torch.compile(model, dynamic=False) (default mode)",
    "flax-jit": "flax_impl.backend's state, train_step and logits, NHWC, as the engine runs here",
    "flax-xla-defaults": "the same step under a plain jax.jit (XLA's default compiler options) "
                         "with flax_impl.model.CNN() at its defaults (Flax's max-pool): what "
                         "the engine changes on the CPU; run only where it changes something",
}
BASELINE = "torch-eager"  # every ratio is variant / torch eager NCHW


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere), for the
    benchmark's and the parity report's machine lines."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

"""Side-by-side speed of the tutorial MNIST CNN in PyTorch and in Flax, timed on the engines the
CLIs run (`torch_impl.backend`, `flax_impl.backend`). Entry point: `python benchmarks/run.py`;
four jobs:

- harness: `cli` (the command line, `run.py scaling`), `session` (one device, start to end),
  `harness` (timing, the files it may replace, the one process runner, signals, the devices
  and what ran where);
- isolated measurements: `isolated` (variants, FLOPs, peak GEMM, train step, logits, layers);
- real training: `training` (the CLIs' loop, the training CLIs as processes, scaling);
- report: `report` (Markdown and PNG).
"""

from pathlib import Path

PROG = "benchmarks/run.py"
REPO = Path(__file__).resolve().parents[1]

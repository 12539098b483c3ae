"""Side-by-side speed of the tutorial MNIST CNN in PyTorch and in Flax, timed on the engines the
CLIs run (`torch_impl.backend`, `flax_impl.backend`). Entry point: `python benchmarks/run.py`;
four jobs, one module each or two:

- harness: `cli` (the command line, `run.py scaling`), `session` (one device, start to end),
  `timing`, `environment` (devices, machine, memory), `harness` (the files it may replace, the
  partial results of a stopped run, the one process runner, signals);
- isolated measurements: `variants`, `isolated` (FLOPs, peak GEMM, train step, logits, layers);
- real training: `training` (the CLIs' loop for one epoch and until 98.5 %, the training CLIs
  as processes, data-parallel scaling);
- report: `report` (Markdown), `plot` (PNG).
"""

from pathlib import Path

PROG = "benchmarks/run.py"
REPO = Path(__file__).resolve().parents[1]

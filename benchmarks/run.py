"""Side-by-side speed of the tutorial MNIST CNN in PyTorch and in Flax: `python benchmarks/run.py`.

The entry point of the `benchmarks` package (`benchmarks/cli.py` says what is measured); it
works from any directory.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == REPO / "benchmarks":
    sys.path[0] = str(REPO)  # the package, not its modules, must be importable
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import PROG  # noqa: E402
from benchmarks.cli import main  # noqa: E402
from mnist_common.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main, prog=PROG)

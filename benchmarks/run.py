"""Side-by-side speed of the tutorial MNIST CNN in PyTorch and in Flax: `python benchmarks/run.py`
(and `python benchmarks/run.py scaling`), from any directory; `benchmarks/cli.py` says what is
measured."""

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]  # `benchmarks.REPO`, before it can be imported
if sys.path and Path(sys.path[0]).resolve() == _ROOT / "benchmarks":
    sys.path[0] = str(_ROOT)  # the package, not its modules, must be importable
elif str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks import PROG  # noqa: E402
from benchmarks.cli import main  # noqa: E402
from mnist_common.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main, prog=PROG)

"""The referee needs none of what it checks: its reading of MNIST, its epoch orders and its
arithmetic run in a process where importing mnist_common, torch, torchvision, JAX, Flax or Optax
fails, and what it finds there is held against the frameworks' side: the orders equal
`epoch_permutation`'s, batch 0 the pipeline's, its loss and gradients torch's within their
float32 bounds."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from parity_helpers import torch_loss_and_grads
from referee import alone
from referee_checks import compare

from mnist_common import loaders
from mnist_common.weights import CANONICAL_SHAPES

PARITY = Path(__file__).parent
UNAVAILABLE = ("mnist_common", "torch", "torchvision", "jax", "jaxlib", "flax", "optax")
# Installed before anything else runs: every import of those names, at any depth, fails.
BLOCKER = f"""import sys
class Unavailable:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {UNAVAILABLE!r}:
            raise ImportError(name + " is unavailable here")
sys.meta_path.insert(0, Unavailable())
"""


def run_without_them(code):
    """Run `code` after the blocker, with parity_tests/ on the path; the finished process."""
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=PARITY, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(PARITY)})


def test_none_of_them_can_be_imported_there():
    tries = "; ".join(f"exec('try:\\n import {name}\\nexcept ImportError: print(\"{name}\")')"
                      for name in UNAVAILABLE)
    done = run_without_them(tries)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == list(UNAVAILABLE)


def test_the_referee_reads_orders_and_computes_without_them(tmp_path, mnist_root,
                                                            canonical_weights, referee_batch):
    np.savez(tmp_path / "weights.npz", **canonical_weights)
    out = tmp_path / "found.npz"
    done = run_without_them(
        f"sys.argv = ['alone', {str(mnist_root)!r}, {str(tmp_path / 'weights.npz')!r}, "
        f"{str(out)!r}]\nimport runpy\nrunpy.run_module('referee.alone', run_name='__main__')")
    assert done.returncode == 0, done.stderr
    found = dict(np.load(out))
    for seed, epoch in alone.ORDERS:
        np.testing.assert_array_equal(found[f"order {seed} {epoch}"],
                                      loaders.epoch_permutation(seed, epoch, 60_000))
    images, labels = referee_batch[2]
    np.testing.assert_array_equal(found["pixels"].astype(np.float32), images)
    np.testing.assert_array_equal(found["labels"], labels)
    loss, grads = torch_loss_and_grads(canonical_weights, referee_batch[2])
    assert compare(loss, found["loss"], found["loss bound"]).share <= 1
    for key in CANONICAL_SHAPES:
        assert compare(grads[key], found[f"grad {key}"], found[f"bound {key}"]).share <= 1, key

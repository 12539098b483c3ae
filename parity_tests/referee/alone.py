"""The referee on its own: read MNIST, cut the epoch orders, run one batch forward and backward,
and write what it found to a .npz file, for a test to hold against the frameworks' side
(`test_referee_alone.py` runs it where mnist_common, torch, torchvision and JAX cannot be
imported).

    python -m referee.alone MNIST_ROOT WEIGHTS.npz OUT.npz
"""

import sys

import numpy as np

from referee import bounds, mnist, network

ORDERS = ((0, 0), (0, 1), (1, 0))  # (seed, epoch)
BATCH_SIZE = 64


def findings(root, params):
    """{name: array}: each epoch's order, batch 0's pixels and labels, its loss and gradients
    with their float32 bounds."""
    images, labels = mnist.load_split(root, train=True)
    out = {f"order {seed} {epoch}": np.concatenate(mnist.batch_indices(len(labels), seed, epoch,
                                                                        BATCH_SIZE))
           for seed, epoch in ORDERS}
    indices = mnist.batch_indices(len(labels), 0, 0, BATCH_SIZE)[0]
    x, y = mnist.pixels(images[indices]), labels[indices].astype(np.int64)
    acts = network.forward(params, x)
    err = bounds.forward_bounds(params, acts)
    grads, d = network.backward(params, acts, y)
    grad_bounds = bounds.gradient_bounds(params, acts, d, err, y)
    out.update({"pixels": x, "labels": y, "loss": network.loss(acts["z5"], y),
                "loss bound": bounds.loss_bound(acts, err, y)})
    out.update({f"grad {key}": value for key, value in grads.items()})
    out.update({f"bound {key}": value for key, value in grad_bounds.items()})
    return out


def main(argv):
    root, weights, out = argv
    with np.load(weights) as arrays:
        params = dict(arrays)
    np.savez(out, **findings(root, params))


if __name__ == "__main__":
    main(sys.argv[1:])

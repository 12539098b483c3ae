"""A batch too large for one pass of XLA:CPU's convolutions: its gradient summed in chunks.

`python -m flax_impl.train --batch-size 40000` aborted with `std::bad_alloc` (exit 134) on a
24 GiB machine with 14 GB free, though the compiled step reports 9.1 GB of temporary buffers
(`memory_analysis()`, batch 40,000; 4.5 GB at 20,000, which trains): the convolution kernels
allocate working memory of their own, outside XLA's accounting. A batch of more than `CHUNK`
examples is therefore run as a `lax.scan` over chunks of `CHUNK`, summing each chunk's share of
the mean loss and of its gradient: the same full-batch step, in another order of float32 sums.
Batches up to `CHUNK` (every batch the parity suite and the tutorial use) take the plain path.
"""

import jax
import jax.numpy as jnp
import optax

CHUNK = 8192  # examples per forward/backward pass; about 1.9 GB of XLA temporaries


def _sum_loss(apply_fn, params, images, labels, weights):
    """Σ weights · cross-entropy over one chunk."""
    logits = apply_fn({"params": params}, images)  # (CHUNK, 10)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, labels) * weights).sum()


def mean_loss_and_grads(apply_fn, params, images, labels, mask=None):
    """(mean loss, its gradient) of a batch larger than `CHUNK`, chunk by chunk; `mask`
    (0/1 per example) keeps only the examples it marks, as `cross_entropy` does."""
    count = images.shape[0]
    weights = jnp.ones((count,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    grad_fn = jax.value_and_grad(_sum_loss, argnums=1)
    loss_sum, grad_sum = 0.0, None
    # Unrolled, not a lax.scan: XLA:CPU ran the convolutions inside a scan's loop ~10x slower.
    for start in range(0, count, CHUNK):
        part = slice(start, min(start + CHUNK, count))
        loss, grads = grad_fn(apply_fn, params, images[part], labels[part], weights[part])
        loss_sum = loss_sum + loss
        grad_sum = grads if grad_sum is None else jax.tree_util.tree_map(jnp.add, grad_sum,
                                                                          grads)
    total = weights.sum()
    return loss_sum / total, jax.tree_util.tree_map(lambda g: g / total, grad_sum)

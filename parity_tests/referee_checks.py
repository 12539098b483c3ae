"""The one comparison every referee check makes, and its record.

A tensor is held to the referee element by element: |framework - referee| <= bound. Its share of
the bound is the largest |framework - referee| / bound (1 is the edge); beside it, the share a
1 % error would have, 0.01 |referee| / bound at the element where that is largest: above 1, the
check rejects a value 1 % off. A check over several tensors (each Adam state) takes the largest
share and the smallest 1 % share: the weakest tensor is the one a 1 % error must still fail.
"""

from typing import NamedTuple

import jax
import numpy as np
from margins import check
from parity_helpers import flax_apply, flax_state, torch_apply, torch_state

from flax_impl import backend as flax_backend
from flax_impl import convert
from mnist_common.weights import CANONICAL_SHAPES
from torch_impl import backend as torch_backend


class Comparison(NamedTuple):
    share: float  # largest |actual - expected| / bound
    error: float  # |actual - expected| at that element
    bound: float  # the bound there
    one_percent_share: float  # largest 0.01 |expected| / bound


def compare(actual, expected, bound):
    """One tensor against the referee; a zero bound demands an exact match."""
    expected = np.asarray(expected, np.float64)
    error = np.abs(np.asarray(actual, np.float64) - expected)
    bound = np.asarray(bound, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bound > 0, error / bound, np.where(error > 0, np.inf, 0.0))
        one_percent = np.where(bound > 0, 0.01 * np.abs(expected) / bound, 0.0)
    worst = np.unravel_index(np.argmax(ratio), ratio.shape) if ratio.ndim else ()
    return Comparison(float(ratio[worst]), float(error[worst]), float(bound[worst]),
                      float(one_percent.max()))


def compare_all(triples):
    """Several (actual, expected, bound) as one check: the largest share, the smallest 1 %."""
    each = [compare(*triple) for triple in triples]
    worst = max(each, key=lambda c: c.share)
    return worst._replace(one_percent_share=min(c.one_percent_share for c in each))


def held(framework, what, triples, *, kind="float32 bound", tight=False, recorded=True,
         group="referee"):
    """Record and assert that every (actual, expected, bound) holds; with `tight`, also that a
    1 % error of each tensor would not (its bound is below 1 % of what it bounds)."""
    result = compare_all(triples)
    name = f"referee: {framework} {what} (|error| / {kind})"
    if recorded:
        check(name, result.share, 1.0, group=group, framework=framework, layer=what,
              error_at_worst=result.error, bound_at_worst=result.bound,
              one_percent_share=result.one_percent_share)
    assert result.share <= 1, f"{name}: error {result.error:.3g} > bound {result.bound:.3g}"
    if tight:
        assert result.one_percent_share > 1, f"{name}: a 1 % error would pass"


def apply_gradients(framework, weights, gradient_steps):
    """The framework's own optimizer (the engine's) fed each step's canonical float32 gradients;
    its canonical (weights, Adam state) after every step."""
    state = (torch_state if framework == "torch" else flax_state)(weights)
    backend = torch_backend if framework == "torch" else flax_backend
    for grads in gradient_steps:
        if framework == "torch":
            state = torch_apply(state, grads)
        else:
            state = flax_apply(state, convert.canonical_to_params(grads))
        yield jax.device_get(backend.state_to_arrays(state))


ADAM_STATES = ("weights", "exp_avg", "exp_avg_sq")


def adam_triples(referee_state, arrays):
    """{"weights" | "exp_avg" | "exp_avg_sq": {key: (framework, referee, bound)}}."""
    params, optimizer = arrays
    state = referee_state
    return {"weights": {k: (params[k], state.params[k], state.err_params[k])
                        for k in CANONICAL_SHAPES},
            "exp_avg": {k: (optimizer[f"exp_avg.{k}"], state.m[k], state.err_m[k])
                        for k in CANONICAL_SHAPES},
            "exp_avg_sq": {k: (optimizer[f"exp_avg_sq.{k}"], state.v[k], state.err_v[k])
                           for k in CANONICAL_SHAPES}}


def assert_adam_held(framework, referee_state, arrays, label, quiet=False):
    """Weights and both moments of every layer within their bounds, each bound tight; the step
    count exact."""
    assert arrays[1]["step"][0] == referee_state.step, f"{framework}: step count"
    for what, triples in adam_triples(referee_state, arrays).items():
        held(framework, f"{label}: {what}", triples.values(), tight=True, recorded=not quiet)

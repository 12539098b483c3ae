"""Each layer of each framework alone against the referee, and every referee check able to fail.

`test_referee.py` holds a whole forward and backward pass to a bound that carries every earlier
layer's rounding: valid, but on the first layers far wider than the values. Here each operation
gets the framework's own float32 inputs of that operation (`layer_capture.py`), and the referee
bounds only that operation's rounding (`referee/layers.py`), tight enough that a 1 % error of any
tensor fails: every check here asserts that, and a test feeds each check a zero, a negated and a
1.01x value of each tensor, and each Adam state, through the same comparison, which must reject
it.
"""

import numpy as np
import pytest
from layer_capture import flax_layers, torch_layers
from parity_helpers import GRADIENT_SCALES, seeded_gradients
from referee import adam, layers
from referee_checks import ADAM_STATES, adam_triples, apply_gradients, compare, compare_all, held

from mnist_common.weights import CANONICAL_SHAPES

CAPTURES = {"torch": torch_layers, "flax": flax_layers}
NAMES = {"z1": "conv 1->16", "z2": "conv 16->32", "z3": "conv 32->64", "z4": "fc 576->100",
         "z5": "logits", "loss": "loss", "dz5": "d logits", "dz4": "d fc 576->100 output",
         "dz3": "d conv 32->64 output", "dz2": "d conv 16->32 output",
         "dz1": "d conv 1->16 output", **{key: f"d {key}" for key in CANONICAL_SHAPES}}
MUTATIONS = {"zero": np.zeros_like, "negated": np.negative,
             "1.01x": lambda value: np.multiply(value, np.float32(1.01), dtype=np.float32)}


@pytest.fixture(scope="module", params=tuple(CAPTURES))
def alone(request, referee_batch, canonical_weights):
    """(framework, {name: (its float32 value, the referee's exact value, the bound)}) for every
    layer's output, the loss, the gradient at every layer's output and every weight gradient."""
    images, labels = referee_batch[2]
    captured = CAPTURES[request.param](canonical_weights, (images, labels))
    exact = layers.references(canonical_weights, images, captured["z"], captured["dz"],
                              np.asarray(labels, np.int64))
    values = {**captured["z"], "loss": np.float32(captured["loss"]), **captured["grads"],
              **{f"d{name}": value for name, value in captured["dz"].items()}}
    assert exact.keys() == NAMES.keys()
    return request.param, {name: (values[name], *exact[name]) for name in NAMES}


def test_each_layer_alone_is_within_its_own_rounding(alone):
    framework, triples = alone
    for name, triple in triples.items():
        held(framework, f"{NAMES[name]}, layer alone", [triple], kind="its own rounding",
             tight=True, group="referee layer")


def rejections(check, value):
    """The mutations of `value` that `check` (value -> share of its bound) rejects."""
    return {kind for kind, mutate in MUTATIONS.items() if check(mutate(value)) > 1}


def test_every_layer_check_rejects_a_zero_negated_or_1_percent_value(alone):
    framework, triples = alone
    missed = {}
    for name, (value, exact, bound) in triples.items():
        caught = rejections(lambda v, e=exact, b=bound: compare(v, e, b).share, value)
        if caught != MUTATIONS.keys():
            missed[name] = sorted(MUTATIONS.keys() - caught)
    assert not missed, f"{framework}: mutations that pass: {missed}"


@pytest.mark.parametrize("framework", tuple(CAPTURES))
def test_every_adam_check_rejects_a_zero_negated_or_1_percent_value(framework,
                                                                     canonical_weights):
    steps = [seeded_gradients(step) for step in range(1, len(GRADIENT_SCALES) + 1)]
    referee_state, missed = adam.init(canonical_weights), {}
    for t, (grads, arrays) in enumerate(zip(steps, apply_gradients(
            framework, canonical_weights, steps), strict=True), start=1):
        referee_state = adam.step(referee_state, grads)
        if t not in (1, len(steps)):
            continue
        triples = adam_triples(referee_state, arrays)
        for what in ADAM_STATES:
            for key, (value, exact, bound) in triples[what].items():
                others = [triple for other, triple in triples[what].items() if other != key]

                def share(mutated, others=others, exact=exact, bound=bound):
                    return compare_all([*others, (mutated, exact, bound)]).share
                caught = rejections(share, value)
                if caught != MUTATIONS.keys():
                    missed[(t, what, key)] = sorted(MUTATIONS.keys() - caught)
    assert not missed, f"{framework}: mutations that pass: {missed}"

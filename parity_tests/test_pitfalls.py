"""Every porting mistake of the catalogue is caught: each fails the cheapest parity check meant
for it, and the shipped code (and a rewrite that is not a mistake) passes every check.

The checks (parity_tests/pitfalls/checks.py) are the assertions of the parity tests named in
`checks.CHECKS`, with their batches and bounds, run against a variant of the Flax side; the
costs of each mistake are measured by `python -m parity_tests.pitfalls` (docs/porting.md).
"""

import jax
import numpy as np
import pytest
from parity_helpers import flax_state, random_batch, to_numpy_batch

from parity_tests.pitfalls import catalogue, checks
from parity_tests.pitfalls.side import PortedCNN

AREAS = ("layout", "network", "init", "optimizer", "loss", "data")


@pytest.fixture(scope="module")
def inputs(canonical_weights):
    return checks.Inputs(canonical_weights)


def _with_data(inputs, check, request):
    """The batch check reads the real MNIST training split (skips where it is not prepared)."""
    if check == "batches":
        inputs.mnist_root = request.getfixturevalue("mnist_root")


@pytest.mark.parametrize("check", checks.CHECKS)
@pytest.mark.parametrize("control", ["shipped", "relu_after_pool"])
def test_the_shipped_side_passes_every_check(control, check, inputs, request):
    # Each check must hold for the shipped code, or a mistake "caught" by it proves nothing;
    # the ReLU moved past the max-pool computes the same function, and must pass too.
    _with_data(inputs, check, request)
    err = checks.run_check(check, catalogue.BY_NAME[control].side, inputs)
    assert err is None, checks.one_line(err)


@pytest.mark.parametrize("mistake", catalogue.MISTAKES, ids=lambda m: m.name)
def test_each_mistake_fails_its_cheapest_check(mistake, inputs, request):
    _with_data(inputs, mistake.caught_by, request)
    err = checks.run_check(mistake.caught_by, mistake.side, inputs)
    # An assertion of the check, or Flax refusing a parameter of the wrong shape at load time;
    # any other error would be a fault of the variant, not a catch.
    assert isinstance(err, (AssertionError, *checks.LOAD_ERRORS)), err


def test_the_ported_module_with_its_defaults_is_the_engines(canonical_weights):
    # The network mistakes change one knob of PortedCNN; with none changed it is the engine's
    # CPU module, bit for bit in the logits and the gradients.
    state = flax_state(canonical_weights)
    x, y = to_numpy_batch(*random_batch(5, batch_size=16))

    def loss(apply_fn, params):
        logits = apply_fn({"params": params}, x)
        return -jax.nn.log_softmax(logits)[np.arange(len(y)), y].mean()

    shipped = jax.value_and_grad(lambda p: loss(state.apply_fn, p))(state.params)
    ported = jax.value_and_grad(lambda p: loss(PortedCNN().apply, p))(state.params)
    for a, b in zip(jax.tree_util.tree_leaves(shipped), jax.tree_util.tree_leaves(ported),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_catalogue_covers_every_area_and_points_at_real_lines():
    assert len(catalogue.MISTAKES) >= 14
    assert {m.area for m in catalogue.MISTAKES} == set(AREAS)
    assert len(catalogue.BY_NAME) == 1 + len(catalogue.MISTAKES) + len(catalogue.CONTROLS)
    for mistake in catalogue.MISTAKES:
        assert mistake.caught_by in checks.CHECKS, mistake.name
    for mistake in catalogue.BY_NAME.values():  # the line where it is done right is there
        assert catalogue.where(mistake.done_right), mistake.name

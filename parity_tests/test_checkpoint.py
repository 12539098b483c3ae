"""Same checkpoint: weights and Adam state through files, from either side, bit-identical;
and the layout conversion checked element by element."""

import jax
import numpy as np
import pytest
import torch
from margins import check
from parity_helpers import (
    FLAX_CPU,
    flax_state,
    flax_step,
    random_batch,
    torch_state,
    torch_step,
)

from flax_impl import backend as flax_backend
from flax_impl import convert
from mnist_common.config import Config
from mnist_common.weights import (
    CANONICAL_SHAPES,
    load_arrays_file,
    load_weights,
    save_arrays,
    save_weights,
)
from torch_impl import backend as torch_backend
from torch_impl.model import CNN as TorchCNN

# As test_model.py: same weights, same batch -> logits to float32 summation-order noise.
LOGIT_ATOL = 1e-5
BACKENDS = {"torch": (torch_backend, torch_state, torch_step),
            "flax": (flax_backend, flax_state, flax_step)}


def save_state(directory, name, backend, state):
    """The state's weights and Adam state written as the CLIs write them; the two paths."""
    params, optimizer = backend.state_to_arrays(state)
    weights_file, optimizer_file = directory / f"{name}.safetensors", directory / f"{name}_opt.st"
    save_weights(weights_file, params)
    save_arrays(optimizer_file, optimizer)
    return weights_file, optimizer_file


def load_state(backend, fresh, files):
    weights_file, optimizer_file = files
    return backend.state_from_arrays(fresh, load_weights(weights_file),
                                     load_arrays_file(optimizer_file))


def assert_bit_identical(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key].dtype == expected[key].dtype == np.float32, key
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


@pytest.mark.parametrize("first,second", [("torch", "flax"), ("flax", "torch")])
def test_round_trip_through_files_is_bit_identical(tmp_path, canonical_weights, first, second):
    # first trains two steps (so the Adam state is not fresh), writes its files; second reads
    # them, writes its own; first reads those back: every array, Adam state included, unchanged.
    backend_a, state_a, step_a = BACKENDS[first]
    backend_b, state_b, _ = BACKENDS[second]
    trained = state_a(canonical_weights)
    for seed in (7, 8):
        trained, _ = step_a(trained, random_batch(seed))
    params, optimizer = backend_a.state_to_arrays(trained)
    assert optimizer["step"][0] == 2
    files_a = save_state(tmp_path, first, backend_a, trained)
    other = load_state(backend_b, state_b(canonical_weights), files_a)
    assert_bit_identical(backend_b.state_to_arrays(other)[1], optimizer)
    files_b = save_state(tmp_path, second, backend_b, other)
    back = load_state(backend_a, state_a(canonical_weights), files_b)
    final_params, final_optimizer = backend_a.state_to_arrays(back)
    check(f"checkpoint: {first} -> {second} -> {first} through files, arrays that changed",
          sum(not np.array_equal(final_params[k], params[k]) for k in params) +
          sum(not np.array_equal(final_optimizer[k], optimizer[k]) for k in optimizer), 0,
          group="checkpoint")
    assert_bit_identical(final_params, params)
    assert_bit_identical(final_optimizer, optimizer)


def torch_logits_of(canonical, images):
    """An independent reference: the tutorial's torch module holding canonical arrays."""
    model = TorchCNN()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in canonical.items()})
    with torch.no_grad():
        return model.eval()(images).numpy()


def test_flax_weights_compute_the_same_function_in_torch():
    # Every element of every converted array feeds these logits: a misplaced element anywhere
    # (a transposed square block, a wrong flatten order) changes them far beyond 1e-5.
    state = flax_backend.create_train_state(Config(seed=3), FLAX_CPU)
    images, labels = random_batch(5, batch_size=64)
    flax_logits = flax_backend.logits(state, flax_backend.place_batch(FLAX_CPU, images, labels))
    canonical = convert.params_to_canonical(jax.device_get(state.params))
    check("checkpoint: Flax weights in torch's module, logits max |torch - Flax|",
          np.abs(torch_logits_of(canonical, images) - flax_logits).max(), LOGIT_ATOL,
          group="checkpoint")
    np.testing.assert_allclose(torch_logits_of(canonical, images), flax_logits, rtol=0,
                               atol=LOGIT_ATOL)


def test_layout_check_can_fail():
    # Guard: a conv kernel with H and W swapped (a transpose that round-trips) must be caught.
    state = flax_backend.create_train_state(Config(seed=3), FLAX_CPU)
    images, labels = random_batch(5, batch_size=64)
    flax_logits = flax_backend.logits(state, flax_backend.place_batch(FLAX_CPU, images, labels))
    canonical = convert.params_to_canonical(jax.device_get(state.params))
    canonical["layer.2.weight"] = np.ascontiguousarray(canonical["layer.2.weight"].swapaxes(2, 3))
    gap = np.abs(torch_logits_of(canonical, images) - flax_logits).max()
    assert gap > 100 * LOGIT_ATOL


def test_flax_params_round_trip_is_bit_identical():
    state = flax_backend.create_train_state(Config(seed=3), FLAX_CPU)
    params = jax.device_get(state.params)
    again = convert.canonical_to_params(convert.params_to_canonical(params))
    for layer, leaves in params.items():
        for name, value in leaves.items():
            np.testing.assert_array_equal(again[layer][name], value)


def test_conversion_moves_every_element():
    # A layout bug that leaves an array unchanged (e.g. a missing transpose of a square block)
    # would still round-trip; check each map against an independent index computation.
    arrays = {k: np.arange(np.prod(s), dtype=np.float32).reshape(s)
              for k, s in CANONICAL_SHAPES.items()}
    params = convert.canonical_to_params(arrays)
    o, i, h, w = 32, 16, 5, 5
    assert params["layer_2"]["kernel"][1, 2, 3, 4] == arrays["layer.2.weight"][4, 3, 1, 2]
    assert params["layer_2"]["kernel"].shape == (h, w, i, o)
    # fc_layer.0: Flax input (h, w, c) = torch input c * 9 + h * 3 + w.
    h, w, c, out = 2, 1, 5, 7
    assert (params["fc_layer_0"]["kernel"][h * 3 * 64 + w * 64 + c, out]
            == arrays["fc_layer.0.weight"][out, c * 9 + h * 3 + w])

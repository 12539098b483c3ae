"""Same checkpoint: canonical file -> Flax -> canonical file -> torch is bit-identical."""

import jax
import numpy as np
from parity_helpers import FLAX_CPU, flax_state, random_batch, torch_state, torch_step

from flax_impl import backend as flax_backend
from flax_impl import convert
from mnist_common.config import Config
from mnist_common.weights import CANONICAL_SHAPES, load_weights, save_arrays, save_weights
from torch_impl import backend as torch_backend


def test_torch_to_flax_to_torch_round_trip_is_bit_identical(tmp_path, canonical_weights):
    tstate, _ = torch_step(torch_state(canonical_weights), random_batch(7))
    torch_params, torch_opt = torch_backend.state_to_arrays(tstate)
    save_weights(tmp_path / "torch.safetensors", torch_params)
    save_arrays(tmp_path / "torch_opt.safetensors", torch_opt)

    fstate = flax_backend.state_from_arrays(flax_state(canonical_weights),
                                          load_weights(tmp_path / "torch.safetensors"), torch_opt)
    flax_params, flax_opt = flax_backend.state_to_arrays(fstate)
    save_weights(tmp_path / "flax.safetensors", flax_params)

    back = torch_backend.state_from_arrays(torch_state(canonical_weights),
                                         load_weights(tmp_path / "flax.safetensors"), flax_opt)
    final_params, final_opt = torch_backend.state_to_arrays(back)
    for key in CANONICAL_SHAPES:
        assert final_params[key].dtype == np.float32
        np.testing.assert_array_equal(final_params[key], torch_params[key], err_msg=key)
    assert final_opt.keys() == torch_opt.keys()
    for key in torch_opt:
        np.testing.assert_array_equal(final_opt[key], torch_opt[key], err_msg=key)


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

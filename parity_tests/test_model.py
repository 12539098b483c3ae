"""Same architecture: parameter count, per-layer shapes and activations, logits."""

import jax
import numpy as np
from margins import check
from parity_helpers import flax_state, random_batch, to_numpy_batch, torch_state

from flax_impl import convert
from flax_impl.model import CNN as FlaxCNN
from mnist_common.weights import CANONICAL_SHAPES, NUM_PARAMETERS
from torch_impl.model import CNN as TorchCNN

# Float32 sums of up to 800 products (conv 32->64) in different orders differ by a few ulps of the
# partial sums; 1e-5 absolute on O(1) values leaves room for that and nothing more.
LOGIT_ATOL = 1e-5


def test_parameter_count_is_123222():
    torch_count = sum(p.numel() for p in TorchCNN().parameters())
    params = FlaxCNN().init(jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1), np.float32))
    flax_count = sum(a.size for a in jax.tree_util.tree_leaves(params))
    assert NUM_PARAMETERS == torch_count == flax_count == 123_222


def test_flax_param_shapes_are_the_canonical_shapes_converted():
    params = FlaxCNN().init(jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1), np.float32))["params"]
    canonical = convert.params_to_canonical(params)
    assert {k: v.shape for k, v in canonical.items()} == CANONICAL_SHAPES


def test_per_layer_activations_match(canonical_weights):
    images, labels = random_batch(0, batch_size=8)
    model = torch_state(canonical_weights).model
    torch_acts = {}
    for name, module in [*model.layer.named_children()]:
        module.register_forward_hook(
            lambda mod, inp, out, name=name: torch_acts.__setitem__(name, out.detach().numpy()))
    model(images)

    state = flax_state(canonical_weights)
    x, _ = to_numpy_batch(images, labels)
    _, captured = state.apply_fn({"params": state.params}, x, capture_intermediates=True,
                                 mutable=["intermediates"])
    inter = captured["intermediates"]
    for torch_name, flax_name in [("0", "layer_0"), ("2", "layer_2"), ("5", "layer_5")]:
        flax_out = np.asarray(inter[flax_name]["__call__"][0])  # NHWC
        torch_out = torch_acts[torch_name].transpose(0, 2, 3, 1)  # NCHW -> NHWC
        assert flax_out.shape == torch_out.shape
        check(f"model: conv {torch_name} output, max |Flax - torch|",
              np.abs(flax_out - torch_out).max(), LOGIT_ATOL, group="model")
        np.testing.assert_allclose(flax_out, torch_out, rtol=0, atol=LOGIT_ATOL)
    assert torch_acts["0"].shape == (8, 16, 24, 24)
    assert torch_acts["4"].shape == (8, 32, 10, 10)
    assert torch_acts["7"].shape == (8, 64, 3, 3)
    assert np.asarray(inter["fc_layer_0"]["__call__"][0]).shape == (8, 100)


def test_logits_match_on_identical_weights(canonical_weights):
    images, labels = random_batch(1, batch_size=64)
    torch_logits = torch_state(canonical_weights).model(images).detach().numpy()
    state = flax_state(canonical_weights)
    x, _ = to_numpy_batch(images, labels)
    flax_logits = np.asarray(state.apply_fn({"params": state.params}, x))
    assert flax_logits.shape == torch_logits.shape == (64, 10)
    check("model: logits, max |Flax - torch|", np.abs(flax_logits - torch_logits).max(),
          LOGIT_ATOL, group="model")
    np.testing.assert_allclose(flax_logits, torch_logits, rtol=0, atol=LOGIT_ATOL)


def test_partial_batch_works_in_both(canonical_weights):
    # The tutorial's view(batch_size, -1) crashed on a last partial batch; ours flatten per example.
    images, labels = random_batch(2, batch_size=3)
    torch_logits = torch_state(canonical_weights).model(images).detach().numpy()
    state = flax_state(canonical_weights)
    flax_logits = np.asarray(state.apply_fn({"params": state.params},
                                            to_numpy_batch(images, labels)[0]))
    check("model: logits of a 3-image batch, max |Flax - torch|",
          np.abs(flax_logits - torch_logits).max(), LOGIT_ATOL, group="model")
    np.testing.assert_allclose(flax_logits, torch_logits, rtol=0, atol=LOGIT_ATOL)


def test_both_models_have_the_layers_of_the_architecture_table():
    """The layer table in mnist_common/architecture.py is what both models build."""
    from mnist_common.architecture import FLATTEN_SHAPE, LAYERS

    images, labels = random_batch(0, batch_size=2)
    torch_model, outputs = TorchCNN(), {}
    modules = dict(torch_model.named_modules())
    for layer in LAYERS:
        modules[layer.key].register_forward_hook(
            lambda mod, inp, out, key=layer.key: outputs.__setitem__(key, (inp[0], out)))
    torch_model(images)
    params = FlaxCNN().init(jax.random.PRNGKey(0), to_numpy_batch(images, labels)[0])["params"]
    for layer in LAYERS:
        torch_in, torch_out = outputs[layer.key]
        assert tuple(torch_in.shape[1:]) == layer.in_shape, layer.key
        assert tuple(torch_out.shape[1:]) == layer.out_shape, layer.key
        assert tuple(modules[layer.key].weight.shape) == layer.weight_shape, layer.key
        kernel = params[convert.module_name(layer.key)]["kernel"]
        flax_shape = layer.weight_shape[2:] + layer.weight_shape[1::-1]  # HWIO or (in, out)
        assert kernel.shape == flax_shape, layer.key
    assert LAYERS[3].in_shape == (int(np.prod(FLATTEN_SHAPE)),)

"""Weight files for the tests: random weights of the model's shapes, and a pickle that runs
code if it is ever unpickled."""

from pathlib import Path

import numpy as np

from mnist_common.weights import CANONICAL_SHAPES


def random_weights(dtype=np.float32):
    """The canonical arrays, seeded, of about a trained model's scale, as `dtype`."""
    rng = np.random.default_rng(0)
    return {k: (0.05 * rng.standard_normal(shape)).astype(dtype)
            for k, shape in CANONICAL_SHAPES.items()}


class RunsCode:
    """A pickle payload that would create `marker` if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def evil_pt(path, marker):
    """A torch .pt state_dict one of whose entries runs code (creates `marker`) when loaded
    without weights_only."""
    import torch

    state = {k: torch.from_numpy(v) for k, v in random_weights().items()}
    state["layer.0.bias"] = RunsCode(marker)
    torch.save(state, path)

"""The interface both engines implement: `torch_impl.backend` and `flax_impl.backend`.

Everything that trains, evaluates or times the model calls these functions, and only these:
the training loop (`mnist_common.loop`), both evaluation CLIs, the benchmark and the parity
tests. The two modules define the same public names with the same parameters, in the same
order, so `diff torch_impl/backend.py flax_impl/backend.py` shows the frameworks, nothing else.

A *placement* (`mnist_common.placement`) is where a run computes: one device, or a
data-parallel group (torchrun ranks, a JAX device mesh) of the engine's `distributed` module;
what a placement does the same way in both engines (who writes, stopping together, leaving the
group) is written there once. A *train state* holds the weights, the Adam state and the
placement; `train_step`, `train_steps` and `state_from_arrays` consume the state they are given
(torch updates it in place, Flax builds new arrays): use only the one they return. A *batch* is
what `place_batch` made of a host batch (NumPy, `mnist_common.loaders`) or `gather_batch` cut
on the device. Canonical arrays are the weight file's: torch layouts, NumPy float32
(`mnist_common.architecture`).
"""

import inspect
from typing import Protocol


class Backend(Protocol):
    """What a framework module provides (see `torch_impl/backend.py` for the reference)."""

    FRAMEWORK: str  # "torch" or "flax": names the CLIs, files and messages
    distributed: object  # the data-parallel module: requested, init, group_over, shutdown, ...

    def versions(self):
        """{package: version} of the framework's packages."""

    def select_placement(self, device, precision):
        """`--device` and `--precision` -> a placement (joins a data-parallel group if one was
        launched); an absent device asked for is a UsageError."""

    def describe_placement(self, placement):
        """One human-readable line: device, threads, processes."""

    def memory_format(self, placement):
        """How the model stores images and activations here: NCHW, channels_last or NHWC."""

    def create_model(self, placement):
        """The module that trains on this placement."""

    def create_train_state(self, config, placement):
        """Weights drawn with torch's default init under `config.seed`, and Adam at
        `config.lr`, on `placement`."""

    def cross_entropy(self, logits, labels, mask=None):
        """Mean cross-entropy over the batch, as `torch.nn.functional.cross_entropy`; with a
        0/1 mask, over the examples it keeps."""

    def place_batch(self, placement, images, labels):
        """A host batch (NumPy: NCHW float32 pixels, int64 labels) -> a batch on the placement;
        in a group, padded to equal shares with a mask (`loaders.pad_batch`) and shared out."""

    def place_split(self, placement, images, labels):
        """A whole split (uint8 images, labels) and the pixel table (`loaders.PIXELS`) held on
        the device for `gather_batch`, or None where batches come from the host."""

    def gather_batch(self, split, indices):
        """The batch of `indices` cut from a placed split, on its device (pixels by the table)."""

    def steps_per_dispatch(self, placement):
        """The default number of steps per `train_steps` call (None: an epoch)."""

    def train_step(self, state, batch):
        """One Adam step: (state, {"loss": the batch's mean loss, on the device}); no host
        read, in a group too."""

    def train_steps(self, state, batches):
        """Several steps with one host synchronisation: (state, losses as a NumPy array)."""

    def evaluate(self, state, batches):
        """{"loss", "accuracy", "correct", "examples"}: exact means over every example."""

    def logits(self, state, batch):
        """Logits (N, 10) of a batch's images, as a NumPy array."""

    def state_to_arrays(self, state):
        """(canonical weights, Adam state: exp_avg.<key>, exp_avg_sq.<key>, step)."""

    def state_from_arrays(self, state, params, optimizer):
        """The state holding canonical weights and (if `optimizer` is not empty) that Adam
        state, on `state`'s placement; `state` itself is consumed."""


def public_functions(module):
    """{name: parameter names} of the Backend functions `module` defines."""
    names = [name for name, value in vars(Backend).items()
             if callable(value) and not name.startswith("_")]
    return {name: list(inspect.signature(getattr(module, name)).parameters) for name in names}

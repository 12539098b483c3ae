"""The interface both engines implement: `torch_impl.backend` and `flax_impl.backend`.

Everything that trains, evaluates or times the model calls these functions, and only these:
the training loop (`mnist_common.loop`), both evaluation CLIs, the benchmark and the parity
tests. The two modules define the same public names with the same parameters, in the same
order, so `diff torch_impl/backend.py flax_impl/backend.py` shows the frameworks, nothing else.

A *placement* is where a run computes: one device, or a data-parallel group (torchrun ranks, a
JAX device mesh); each backend's own type. A *train state* holds the weights and the Adam
state. A *batch* is what `place_batch` made of the loader's tensors. Canonical arrays are the
weight file's: torch layouts, NumPy float32 (`mnist_common.architecture`).
"""

import inspect
from typing import Protocol


class Backend(Protocol):
    """What a framework module provides (see `torch_impl/backend.py` for the reference)."""

    FRAMEWORK: str  # "torch" or "flax": names the CLIs, files and messages

    def versions(self):
        """{package: version} of the framework's packages."""

    def select_placement(self, device, precision):
        """`--device` and `--precision` -> a placement (joins a data-parallel group if one was
        launched); an absent device asked for is a UsageError."""

    def describe_placement(self, placement):
        """One human-readable line: device, threads, processes."""

    def is_writer(self, placement):
        """True in the one process that writes files and prints (rank / process 0)."""

    def agree_stop(self, placement, wants_to_stop):
        """Whether every process stops now: any process's request stops them all."""

    def check_batch_size(self, batch_size, placement):
        """A UsageError unless every process gets at least one image of a full batch."""

    def release_placement(self, placement):
        """Leave the data-parallel group, if any."""

    def create_model(self, placement):
        """The module that trains on this placement."""

    def create_train_state(self, config, placement):
        """Weights drawn with torch's default init under `config.seed`, and Adam at
        `config.lr`, on `placement`."""

    def cross_entropy(self, logits, labels):
        """Mean cross-entropy over the batch, as `torch.nn.functional.cross_entropy`."""

    def place_batch(self, placement, images, labels):
        """Loader tensors (NCHW float32, int64) -> a batch on the placement."""

    def place_split(self, placement, images, labels):
        """A whole split (uint8 images, labels) held on the device for `gather_batch`, or None
        where batches must come from the host (`place_batch`)."""

    def gather_batch(self, split, indices):
        """The batch of `indices` cut from a placed split, on its device."""

    def steps_per_dispatch(self, placement):
        """The default number of steps per `train_steps` call (None: an epoch)."""

    def train_step(self, state, batch):
        """One Adam step: (state, {"loss": the batch's mean loss, on the device})."""

    def train_steps(self, state, batches):
        """Several steps with one host synchronisation: (state, losses as a NumPy array)."""

    def evaluate(self, state, batches):
        """{"loss", "accuracy", "correct", "examples"}: exact means over every example."""

    def logits(self, state, batch):
        """Logits (N, 10) of a batch's images, as a NumPy array."""

    def state_to_arrays(self, state):
        """(canonical weights, Adam state: exp_avg.<key>, exp_avg_sq.<key>, step)."""

    def state_from_arrays(self, state, params, optimizer):
        """A state holding canonical weights and (if `optimizer` is not empty) that Adam
        state."""


def public_functions(module):
    """{name: parameter names} of the Backend functions `module` defines."""
    names = [name for name, value in vars(Backend).items()
             if callable(value) and not name.startswith("_")]
    return {name: list(inspect.signature(getattr(module, name)).parameters) for name in names}

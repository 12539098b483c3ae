"""The canonical weight file: the tutorial's state_dict keys and torch layouts, float32.

Both frameworks read and write this format through NumPy, so a file from either side (or the
tutorial's own `torch.save(model.state_dict())` `.pt` file) loads in both.
"""

import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from mnist_common.architecture import CANONICAL_SHAPES, NUM_PARAMETERS  # noqa: F401 (re-exported)
from mnist_common.errors import UsageError, describe, first_line
from mnist_common.fileio import check_path, say
from mnist_common.ownership import owned_path


def check_weights(arrays, source):
    """Raise UsageError unless `arrays` has exactly the canonical keys and shapes."""
    missing = [k for k in CANONICAL_SHAPES if k not in arrays]
    unexpected = [k for k in arrays if k not in CANONICAL_SHAPES]
    if missing or unexpected:
        raise UsageError(f"{source}: not this model's weights (missing keys: {missing or 'none'}; "
                         f"unexpected keys: {unexpected or 'none'})")
    for key, shape in CANONICAL_SHAPES.items():
        if tuple(arrays[key].shape) != shape:
            raise UsageError(f"{source}: {key} has shape {tuple(arrays[key].shape)}, "
                             f"expected {shape}")
        if not np.issubdtype(arrays[key].dtype, np.floating):
            raise UsageError(f"{source}: {key} has dtype {arrays[key].dtype}, expected float32")


def save_weights(path, arrays, metadata=None):
    """Write canonical arrays (validated, float32, contiguous) atomically to a safetensors file,
    as the project's (`mnist_common.ownership`)."""
    check_weights(arrays, path)
    tensors = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in CANONICAL_SHAPES}
    save_arrays(path, tensors, metadata)


def save_arrays(path, arrays, metadata=None):
    """Write any dict of NumPy arrays atomically to a safetensors file, as the project's."""
    with owned_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp),
                  metadata=metadata)


def load_arrays_file(path):
    """Read a safetensors file into NumPy arrays; a damaged file is a UsageError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{path}: not a readable safetensors file ({first_line(err)})") from None
    except TypeError as err:  # a dtype NumPy lacks, such as bfloat16
        raise UsageError(f"{path}: holds a tensor type NumPy cannot read ({first_line(err)}); "
                         f"expected float32") from None


def _refusal_reason(err):
    """What torch's weights_only unpickler refused, in a few words."""
    named = re.search(r"GLOBAL ([\w.]+)", str(err))
    if named:
        return f"it asks for {named.group(1)}"
    # torch's own first line suggests weights_only=False: the one thing not to do here.
    unsupported = [line.strip() for line in str(err).splitlines() if "Unsupported" in line]
    return unsupported[0].split(". ")[0] if unsupported else "torch's unpickler refused it"


def _load_pt(path):
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write itself; the load still decides.
            warnings.simplefilter("ignore")
            # weights_only: a .pt file is a pickle, and a pickle can run code; only tensors pass.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UsageError(f"{path}: refused: not a plain state_dict of tensors; loaded with "
                         f"weights_only=True, which blocks code ({_refusal_reason(err)})") from None
    except Exception as err:  # torch.load reports a damaged file with many exception types
        raise UsageError(f"{path}: not a readable PyTorch .pt file ({describe(err)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path}: expected a state_dict (a dict of tensors), "
                         f"found {type(obj).__name__}")
    try:  # dtypes are kept, so load_weights converts (and says so) or refuses as for safetensors
        return {k: _tensor_to_numpy(v) for k, v in obj.items()}
    except (RuntimeError, TypeError) as err:  # e.g. complex or sparse tensors
        raise UsageError(f"{path}: cannot read its tensors as arrays "
                         f"({first_line(err)})") from None


def _tensor_to_numpy(tensor):
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16 (refused as in a .safetensors)
        raise TypeError("bfloat16 tensors are not supported; expected float32")
    return tensor.numpy()


def load_weights(path):
    """Read canonical weights from `.safetensors` (either framework) or the tutorial's `.pt`."""
    path = Path(path)
    check_path(path, "--weights")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, not a weight file")
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():  # a FIFO or device would block or stream forever
        raise UsageError(f"{path}: not a regular file")
    if path.suffix == ".safetensors":
        arrays = load_arrays_file(path)
    elif path.suffix in (".pt", ".pth"):
        arrays = _load_pt(path)
    else:
        raise UsageError(f"{path}: unknown weight format {path.suffix!r} "
                         f"(expected .safetensors, .pt or .pth)")
    check_weights(arrays, path)
    # float16 and float64 files are accepted: float32 holds every float16 exactly, and a float64
    # value rounds to the nearest float32 (the model computes in float32 either way).
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused
        weights = {k: arrays[k].astype(np.float32, copy=False) for k in CANONICAL_SHAPES}
    bad = [k for k, v in weights.items() if not np.isfinite(v).all()]
    if bad:
        raise UsageError(f"{path}: {bad[0]} contains NaN or infinite values"
                         f"{' as float32' if np.isfinite(arrays[bad[0]]).all() else ''}")
    converted = sorted({str(arrays[k].dtype) for k in CANONICAL_SHAPES} - {"float32"})
    if converted:
        say(f"{path}: converted {' and '.join(converted)} weights to float32")
    return weights

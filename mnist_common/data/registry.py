"""The registry copy's pickle: a NumPy-only unpickler, and its conversion to the four IDX files.

A pickle is code: only a file whose SHA-256 we know gets near `restricted_load`, and even then the
unpickler admits nothing but NumPy's array reconstruction.
"""

import codecs
import io
import pickle

import numpy as np

from mnist_common.data.idx import idx_bytes, short_error
from mnist_common.errors import DataError


def _latin1_encode(text, encoding="utf-8"):
    """`_codecs.encode` restricted to latin-1: how Python 3 writes bytes at pickle protocol 2."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise DataError(f"refusing to unpickle _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals():
    """The only globals a registry pickle may name: NumPy's array reconstruction."""
    from numpy._core import multiarray

    return {
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # An array's raw bytes pickled by Python 3 at protocol 2 arrive as encode(str, "latin1").
        ("_codecs", "encode"): _latin1_encode,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can build NumPy arrays and nothing else."""

    def find_class(self, module, name):
        """Admit only the allowed NumPy globals; old `numpy.core` names map to `numpy._core`."""
        # Resolving numpy.core.* through NumPy itself would emit a DeprecationWarning.
        if module == "numpy.core" or module.startswith("numpy.core."):
            module = "numpy._core" + module[len("numpy.core") :]
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise DataError(f"refusing to unpickle {module}.{name}: only NumPy arrays are allowed")
        return obj


def restricted_load(file, encoding="latin1"):
    """Unpickle from a binary file with the NumPy-only unpickler; any failure is a DataError."""
    try:
        return _NumpyOnlyUnpickler(file, encoding=encoding).load()
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"could not unpickle the data: {short_error(err)}") from None


def restricted_loads(data, encoding="latin1"):
    """Unpickle bytes admitting only NumPy array reconstruction; anything else is a DataError."""
    return restricted_load(io.BytesIO(data), encoding)


def _pixels(x, part):
    """Float pixels k/256 of shape (N, 784) as uint8 images of shape (N, 28, 28)."""
    if x.ndim != 2 or x.shape[1] != 28 * 28 or x.dtype.kind != "f":
        raise DataError(
            f"registry copy part {part}: expected float images of shape (N, 784), "
            f"got {x.dtype} {x.shape}"
        )
    out = np.empty((x.shape[0], 28 * 28), dtype=np.uint8)
    # Blocks keep the float temporaries small (the full training part is 157 MB of float32).
    for start in range(0, x.shape[0], 8192):
        block = np.rint(x[start : start + 8192].astype(np.float64) * 256)
        if block.size and (block.min() < 0 or block.max() > 255):
            raise DataError(f"registry copy part {part}: pixel values outside [0, 255/256]")
        out[start : start + 8192] = block
    return out.reshape(-1, 28, 28)


def _labels(y, n, part):
    """Labels 0..9 of length `n` as uint8."""
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"registry copy part {part}: expected {n} labels, got shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9 or np.any(y != np.rint(y))):
        raise DataError(f"registry copy part {part}: labels are not integers 0..9")
    return y.astype(np.uint8)


def idx_from_registry_pickle(obj):
    """Turn mnist.pkl's ((x, y) train, (x, y) validation, (x, y) test) into the four IDX files."""
    if not isinstance(obj, (tuple, list)) or len(obj) != 3:
        raise DataError("registry copy: expected a (train, validation, test) triple")
    images, labels = [], []
    for part, pair in enumerate(obj):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise DataError(f"registry copy part {part}: expected an (images, labels) pair")
        x, y = (np.asarray(a) for a in pair)
        images.append(_pixels(x, part))
        labels.append(_labels(y, x.shape[0], part))
    # MNIST's 60,000 training images are the pickle's train part followed by its validation part.
    return {
        "train-images-idx3-ubyte": idx_bytes(np.concatenate(images[:2])),
        "train-labels-idx1-ubyte": idx_bytes(np.concatenate(labels[:2])),
        "t10k-images-idx3-ubyte": idx_bytes(images[2]),
        "t10k-labels-idx1-ubyte": idx_bytes(labels[2]),
    }

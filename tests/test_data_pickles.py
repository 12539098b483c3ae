"""Pickles from the registry copy of MNIST: restricted unpickling (arrays only, never code) and
their conversion into IDX files."""

import os
import pickle
import struct
import warnings

import numpy as np
import pytest
from data_helpers import assert_one_line, idx_bytes

from mnist_common.data import MNIST_FILES, idx_from_registry_pickle, restricted_loads
from mnist_common.errors import DataError

# --- restricted unpickling -----------------------------------------------------------------------


def test_restricted_loads_numpy_arrays():
    arrays = (np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 255], dtype=np.int64))
    for protocol in (2, 3, 4):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = restricted_loads(pickle.dumps(arrays, protocol=protocol))
        for got, want in zip(loaded, arrays, strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def test_restricted_loads_python2_latin1_pickle():
    # How Python 2 with NumPy 1.x pickled np.array([1, 2, 255], dtype=np.uint8): the raw bytes are
    # a py2 str (SHORT_BINSTRING), which only decodes with encoding="latin1".
    py2 = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01K\x00\x85"
        b"q\x02U\x01bq\x03\x87q\x04Rq\x05(K\x01K\x03\x85q\x06cnumpy\ndtype\nq\x07U\x02u1q\x08"
        b"K\x00K\x01\x87q\tRq\n(K\x03U\x01|q\x0bNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0c"
        b"b\x89U\x03\x01\x02\xffq\rtq\x0eb."
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = restricted_loads(py2, encoding="latin1")
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, [1, 2, 255])


class _Exploit:
    """Pickles to a call of os.system."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_restricted_loads_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        pickle.dumps(_Exploit(f"touch {marker}"), protocol=2),
        pickle.dumps((np.zeros(2), _Exploit(f"touch {marker}")), protocol=4),
        pickle.dumps(eval, protocol=2),
    ]
    for payload in payloads:
        with pytest.raises(DataError) as err:
            restricted_loads(payload)
        assert assert_one_line(err).startswith("refusing to unpickle")
    assert not marker.exists()


def test_restricted_loads_refuses_other_codecs():
    payload = pickle.dumps(b"abc", protocol=2).replace(b"latin1", b"utf_16")
    with pytest.raises(DataError):
        restricted_loads(payload)


def test_restricted_loads_garbage_is_a_data_error():
    with pytest.raises(DataError) as err:
        restricted_loads(b"\x80\x02not a pickle")
    assert_one_line(err)


# --- registry pickle conversion ------------------------------------------------------------------


def test_idx_from_registry_pickle():
    rng = np.random.default_rng(7)
    sizes = (3, 2, 4)
    pixels = [rng.integers(0, 256, (n, 784), dtype=np.uint8) for n in sizes]
    labels = [rng.integers(0, 10, n).astype(np.int64) for n in sizes]
    parts = tuple(
        (k.astype(np.float32) / np.float32(256), y) for k, y in zip(pixels, labels, strict=True)
    )
    out = idx_from_registry_pickle(parts)
    assert sorted(out) == sorted(f.name for f in MNIST_FILES)
    train_k = np.concatenate(pixels[:2]).reshape(-1, 28, 28)
    assert out["train-images-idx3-ubyte"] == idx_bytes(train_k)
    assert out["train-labels-idx1-ubyte"] == idx_bytes(np.concatenate(labels[:2]))
    assert out["t10k-images-idx3-ubyte"] == idx_bytes(pixels[2].reshape(-1, 28, 28))
    assert out["t10k-labels-idx1-ubyte"] == idx_bytes(labels[2])
    assert out["train-images-idx3-ubyte"][:16] == struct.pack(">IIII", 2051, 5, 28, 28)
    assert out["t10k-labels-idx1-ubyte"][:8] == struct.pack(">II", 2049, 4)


@pytest.mark.parametrize(
    "obj",
    [
        "not a tuple",
        ((np.zeros((1, 784), np.float32), np.zeros(1)),) * 2,
        ((np.zeros((1, 783), np.float32), np.zeros(1)),) * 3,
        ((np.full((1, 784), 1.5, np.float32), np.zeros(1)),) * 3,
        ((np.zeros((2, 784), np.float32), np.zeros(3)),) * 3,
        ((np.zeros((1, 784), np.float32), np.array([10])),) * 3,
    ],
)
def test_idx_from_registry_pickle_rejects_odd_layouts(obj):
    with pytest.raises(DataError) as err:
        idx_from_registry_pickle(obj)
    assert_one_line(err)



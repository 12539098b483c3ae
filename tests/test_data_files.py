"""MNIST files already on disk: the manifest, IDX files checked and loaded, damage reported and
never overwritten. Tiny hand-made files (data_helpers); no network is touched. (`.gz` files:
test_data_gz.py.)
"""

import gzip
import struct

import numpy as np
import pytest
from data_helpers import (
    ARRAYS,
    MANIFEST,
    TINY,
    assert_one_line,
    failing_source,
    good_source,
    put_files,
)

from mnist_common import data
from mnist_common.data import (
    MNIST_FILES,
    RAW_SUBDIR,
    load_arrays,
    prepare_data,
    verify_idx,
)
from mnist_common.errors import DataError

# --- the manifest -------------------------------------------------------------------------------


def test_manifest_is_design_table():
    assert RAW_SUBDIR == ("MNIST", "raw")
    assert [(f.name, f.size) for f in MNIST_FILES] == [
        ("train-images-idx3-ubyte", 47_040_016),
        ("train-labels-idx1-ubyte", 60_008),
        ("t10k-images-idx3-ubyte", 7_840_016),
        ("t10k-labels-idx1-ubyte", 10_008),
    ]
    assert MNIST_FILES[0].sha256.startswith("ba891046e650")
    assert MNIST_FILES[3].sha256.endswith("ec33f2")



# --- local files ---------------------------------------------------------------------------------


def test_good_local_files_load(tmp_path):
    put_files(tmp_path)
    root = prepare_data(tmp_path, files=MANIFEST, sources=[])
    assert root == tmp_path
    for train, prefix in ((True, "train"), (False, "t10k")):
        images, labels = load_arrays(root, train=train)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, ARRAYS[f"{prefix}-images-idx3-ubyte"])
        np.testing.assert_array_equal(labels, ARRAYS[f"{prefix}-labels-idx1-ubyte"])


def test_present_files_need_no_write_access(tmp_path):
    put_files(tmp_path)
    prepare_data(tmp_path, files=MANIFEST, sources=[failing_source])
    assert not (tmp_path / data.LOCK_NAME).exists()


def _wrong_magic(content: bytes) -> bytes:
    return struct.pack(">I", 2049) + content[4:]


def _truncated(content: bytes) -> bytes:
    return content[: len(content) - 100]


def _flipped(content: bytes) -> bytes:
    damaged = bytearray(content)
    damaged[500] ^= 0x01
    return bytes(damaged)


def _trailing(content: bytes) -> bytes:
    return content + b"\0"


def _gzipped(content: bytes) -> bytes:

    return gzip.compress(content)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (_wrong_magic, "wrong magic number"),
        (_truncated, "is truncated"),
        (_flipped, "wrong SHA-256"),
        (_trailing, "bytes, expected"),
        (_gzipped, "gzip"),
    ],
)
def test_damaged_local_file_is_reported_not_overwritten(tmp_path, damage, words):
    name = "train-images-idx3-ubyte"
    bad = damage(TINY[name])
    raw = put_files(tmp_path, {**TINY, name: bad})
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path, files=MANIFEST, sources=[good_source])
    message = assert_one_line(err)
    assert words in message
    assert str(raw / name) in message
    assert "delete it" in message
    assert (raw / name).read_bytes() == bad


def test_verify_idx_missing_and_good(tmp_path):
    raw = put_files(tmp_path, {"t10k-labels-idx1-ubyte": TINY["t10k-labels-idx1-ubyte"]})
    verify_idx(raw / "t10k-labels-idx1-ubyte", MANIFEST[3])
    with pytest.raises(DataError) as err:
        verify_idx(raw / "t10k-images-idx3-ubyte", MANIFEST[2])
    assert "is missing" in assert_one_line(err)


def test_load_arrays_without_files_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as err:
        load_arrays(tmp_path, train=True)
    assert "python -m mnist_common.data" in assert_one_line(err)

"""The four MNIST IDX files: their facts (name, size, SHA-256), writing and verifying them."""

import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnist_common.errors import DataError, describe, first_line
from mnist_common.fileio import sha256_file

PROG = "python -m mnist_common.data"
RAW_SUBDIR = ("MNIST", "raw")

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


class IdxFile(NamedTuple):
    """One expected IDX file: its name under `MNIST/raw/`, its size in bytes, its SHA-256."""

    name: str
    size: int
    sha256: str


MNIST_FILES = (
    IdxFile(
        "train-images-idx3-ubyte",
        47_040_016,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    IdxFile(
        "train-labels-idx1-ubyte",
        60_008,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    IdxFile(
        "t10k-images-idx3-ubyte",
        7_840_016,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    IdxFile(
        "t10k-labels-idx1-ubyte",
        10_008,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
)


def short_error(err):
    """An exception as one short line (a DataError's own message, else `Type: message`)."""
    text = first_line(err) if isinstance(err, DataError) else describe(err)
    return text if len(text) <= 160 else text[:157] + "..."


def idx_bytes(array):
    """A uint8 array as an IDX file: magic 0x0000080N, N big-endian dims, then the data."""
    header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _expected_magic(name):
    """The IDX magic number a file name implies (idx3 = images, idx1 = labels), if any."""
    if "idx3" in name:
        return IMAGES_MAGIC
    if "idx1" in name:
        return LABELS_MAGIC
    return None


def _header_problem(head, size, expected):
    """What the first 16 bytes and the size say is wrong with a file, as a phrase, or None."""
    if head[:2] == b"\x1f\x8b":
        return "is still gzip-compressed (gunzip it)"
    if len(head) < 4:
        return f"is truncated ({size:,} of {expected.size:,} bytes)"
    magic = struct.unpack(">I", head[:4])[0]
    want = _expected_magic(expected.name)
    ndim = head[3]
    if (want is not None and magic != want) or magic >> 8 != 0x08 or not 1 <= ndim <= 3:
        shown = f"{want:#010x}" if want is not None else "0x000008NN"
        return f"has the wrong magic number {magic:#010x} (expected {shown}): not an MNIST IDX file"
    header_size = 4 + 4 * ndim
    if size < header_size:
        return f"is truncated ({size:,} of {expected.size:,} bytes)"
    dims = struct.unpack(f">{ndim}I", head[4:header_size])
    implied = header_size + int(np.prod(dims, dtype=np.int64))
    if size < implied or size < expected.size:
        return f"is truncated ({size:,} of {max(implied, expected.size):,} bytes)"
    if size != expected.size:
        return f"has {size:,} bytes, expected {expected.size:,}"
    return None


def idx_problem(path, expected):
    """What is wrong with `path` as `expected`, as a phrase ("is truncated ..."), or None."""
    path = Path(path)
    if not path.exists():
        return "is missing"
    if not path.is_file():
        return "is not a regular file"
    with open(path, "rb") as f:
        head = f.read(16)
    problem = _header_problem(head, path.stat().st_size, expected)
    if problem is not None:
        return problem
    digest = sha256_file(path)
    if digest != expected.sha256:
        return f"has the wrong SHA-256 ({digest[:16]}…, expected {expected.sha256[:16]}…)"
    return None


def verify_idx(path, expected):
    """Raise DataError unless `path` is exactly `expected` (magic, size, SHA-256)."""
    path = Path(path)
    problem = idx_problem(path, expected)
    if problem is None:
        return
    if problem == "is missing" and path.is_symlink():
        raise DataError(
            f"MNIST file {path} is a symbolic link to {os.readlink(path)}, which does not "
            f"exist; remove the link or point it at the official file"
        )
    if problem == "is missing":
        raise DataError(
            f"MNIST file {path} is missing; run `{PROG}` or put the official file there"
        )
    raise DataError(
        f"MNIST file {path} {problem}; delete it so it can be fetched again, "
        "or replace it with the official file"
    )


def present_files(directory, files):
    """The names of `files` found in `directory`, uncompressed or as `.gz`."""
    directory = Path(directory)
    return [
        f.name
        for f in files
        if os.path.lexists(directory / f.name) or os.path.lexists(directory / (f.name + ".gz"))
    ]

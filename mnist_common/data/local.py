"""Where the files live: the data root, its raw dir, the files found there, reading them back.

Files found under the raw dir count whether uncompressed or gzipped (`.gz`, as the official
mirrors serve them and torchvision keeps them); a `.gz` is decompressed and verified in place.
"""

import gzip
import os
import zlib
from pathlib import Path

from mnist_common.data.idx import (
    MNIST_FILES,
    PROG,
    RAW_SUBDIR,
    idx_problem,
    present_files,
    short_error,
    verify_idx,
)
from mnist_common.errors import DataError
from mnist_common.fileio import fsync_dir, fsync_file, say
from mnist_common.ownership import make_temp_dir, remove_temp_dir

TEMP_PREFIX = ".fetch-"


def cache_data_dir():
    """The per-user cache dir: $XDG_CACHE_HOME (when absolute) or ~/.cache, then our name."""
    cache = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return base / "mnist-cnn-parity"


def default_data_dir():
    """$MNIST_DATA_DIR if set, else a per-user cache dir ($XDG_CACHE_HOME or ~/.cache)."""
    env = os.environ.get("MNIST_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return cache_data_dir()


def given_data_dir(data_dir):
    """The flag's value if given, else `default_data_dir()`; made absolute, taken literally."""
    if data_dir is None or os.fspath(data_dir) == "":
        path = default_data_dir()
    else:
        path = Path(data_dir).expanduser()
    return path.absolute()


def raw_dir(root):
    """Where torchvision looks for the four files under `root`."""
    return Path(root).joinpath(*RAW_SUBDIR)


def _root_above(path, files):
    """`<x>` if `path` is `<x>/MNIST/raw` or `<x>/MNIST` and the files are in `<x>/MNIST/raw`."""
    if not path.is_dir() or present_files(raw_dir(path), files):
        return None
    if path.name == RAW_SUBDIR[1] and path.parent.name == RAW_SUBDIR[0]:
        root = path.parent.parent
    elif path.name == RAW_SUBDIR[0]:
        root = path.parent
    else:
        return None
    return root if present_files(raw_dir(root), files) else None


def resolve_data_dir(data_dir, files=MNIST_FILES):
    """The data root: the flag's value if given, else `default_data_dir()`; made absolute.

    A dir given one or two levels too deep — `<x>/MNIST/raw` or `<x>/MNIST` when that is where
    the files already are — resolves to `<x>`, so they are used rather than fetched again below.
    """
    path = given_data_dir(data_dir)
    return _root_above(path, files) or path


def missing_files(raw, files):
    """The files absent from `raw`; raises DataError for any that is present but wrong."""
    missing = []
    for expected in files:
        path = raw / expected.name
        if not os.path.lexists(path):
            missing.append(expected)
        else:
            verify_idx(path, expected)
    return missing


def gunzip(src, dst, max_bytes):
    """Decompress `src` into `dst`, stopping one byte past `max_bytes` (a size check then fails)."""
    left = max_bytes + 1
    with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
        while left > 0:
            block = fin.read(min(1 << 20, left))
            if not block:
                break
            fout.write(block)
            left -= len(block)


def install(tmp, raw, files):
    """Move verified `files` from `tmp` into `raw`, each by an atomic rename after an fsync."""
    for expected in files:
        fsync_file(tmp / expected.name)
        os.replace(tmp / expected.name, raw / expected.name)
    fsync_dir(raw)


def _unpack_one(gz, dst, expected):
    """Decompress one local `.gz` into `dst` and verify it; a bad one is a DataError naming it."""
    if not gz.is_file():
        problem = "is not a regular file"
    else:
        try:
            gunzip(gz, dst, expected.size)
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            problem = f"is not a readable gzip file ({short_error(err)})"
        else:
            problem = idx_problem(dst, expected)
            if problem is not None:
                problem = f"decompresses to a file that {problem}"
    if problem is not None:
        raise DataError(
            f"MNIST file {gz} {problem}; delete it so it can be fetched again, "
            "or replace it with the official file"
        )


def unpack_gz(raw, missing, progress):
    """Decompress the `.gz` copies of `missing` files found in `raw`; return those still missing.

    Call it holding the data dir's lock: its temp dir is swept as stale by the next holder.
    """
    packed = [f for f in missing if os.path.lexists(raw / (f.name + ".gz"))]
    if not packed:
        return list(missing)
    if progress:
        say(f"decompressing {len(packed)} .gz file{'s' * (len(packed) > 1)} in {raw}…")
    tmp = make_temp_dir(raw, TEMP_PREFIX)  # recorded: only the project's temps are swept
    try:
        for expected in packed:
            _unpack_one(raw / (expected.name + ".gz"), tmp / expected.name, expected)
        install(tmp, raw, packed)
    finally:
        remove_temp_dir(tmp)
    return [f for f in missing if f not in packed]


def load_arrays(root, train):
    """Images (N, 28, 28) uint8 and labels (N,) int64, read by torchvision from `root`."""
    from torchvision.datasets import MNIST

    try:
        dataset = MNIST(os.fspath(root), train=train, download=False)
    except Exception as err:
        raise DataError(
            f"cannot read MNIST under {raw_dir(root)} ({short_error(err)}); "
            f"run `{PROG} --data-dir {root}` first"
        ) from None
    return dataset.data.numpy(), dataset.targets.numpy()

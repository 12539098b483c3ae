"""Raw dirs holding only `.gz` files, as the official mirrors serve them: decompressed offline,
before any source, never over an uncompressed file; a damaged `.gz` is named and kept. Tiny
hand-made files (data_helpers) except where a test runs the real command on the real files; no
network is touched.
"""

import gzip
import shutil

import pytest
from data_helpers import (
    MANIFEST,
    TINY,
    assert_one_line,
    data_cli,
    good_source,
    never_called,
    put_files,
    put_gz,
    raw_of,
)

from mnist_common.data import MNIST_FILES, prepare_data, raw_dir
from mnist_common.errors import DataError


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
    done = data_cli("--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path}\n"
    assert len(done.stderr.splitlines()) == 1 and "decompressing" in done.stderr
    again = data_cli("--data-dir", str(tmp_path), "--no-progress")
    assert (again.returncode, again.stdout, again.stderr) == (0, f"{tmp_path}\n", "")



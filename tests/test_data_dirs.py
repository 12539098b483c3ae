"""Where the MNIST files live: the default data dir, --data-dir and MNIST_DATA_DIR, a data dir
given one or two levels too deep, a data dir that is a file or cannot be written. Tiny
hand-made files (data_helpers) except where a test runs the real command on the real files;
no network is touched.
"""

import os

import pytest
from data_helpers import (
    MANIFEST,
    TINY,
    assert_one_line,
    data_cli,
    everything_under,
    good_source,
    never_called,
    put_files,
    put_gz,
    raw_of,
)

from mnist_common.data import (
    MNIST_FILES,
    default_data_dir,
    prepare_data,
    raw_dir,
    resolve_data_dir,
)
from mnist_common.errors import DataError

# --- the default and the flag -------------------------------------------------------------------


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
    done = data_cli("--data-dir", str(raw))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path}\n"
    assert done.stderr.splitlines() == [
        f"using {tmp_path} as the data root: {raw} already holds MNIST files"
    ]
    assert sorted(p.name for p in raw.iterdir()) == sorted(f.name for f in MNIST_FILES)
    quiet = data_cli("--data-dir", str(tmp_path / "MNIST"), "--no-progress")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, f"{tmp_path}\n", "")


# --- a data dir that is a file or cannot be written ---------------------------------------------


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


def test_cli_data_dir_is_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    done = data_cli("--data-dir", str(target))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("python -m mnist_common.data: error: ")
    assert str(target) in lines[0]
    assert "Traceback" not in done.stderr


def test_cli_env_data_dir_that_is_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    for env in ({"MNIST_DATA_DIR": str(target)}, {"MNIST_DATA_DIR": str(target / "MNIST")}):
        done = data_cli(env={**env, "MNIST_OFFLINE": "0"})
        assert done.returncode == 2
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("python -m mnist_common.data: error: ")
        assert str(target) in lines[0] and "is not a directory" in lines[0]
    assert target.read_text() == "x"


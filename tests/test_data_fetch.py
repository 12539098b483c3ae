"""Fetching MNIST: only missing files are fetched, a failed or killed fetch leaves nothing a
rerun trusts, concurrent prepares share one fetch. Fake sources on tiny hand-made files
(data_helpers); no network is touched.
"""

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
from data_helpers import (
    MANIFEST,
    TINY,
    assert_one_line,
    data_litter,
    failing_source,
    final_names,
    good_source,
    partial_then_raise,
    put_files,
    raw_of,
    some_complete_then_raise,
    start_stuck_fetch,
    wrong_content_source,
)

from mnist_common.data import prepare_data
from mnist_common.errors import DataError

# --- sources ------------------------------------------------------------------------------------


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
    assert data_litter(tmp_path) == []


def test_working_source_installs_verified_files(tmp_path, capsys):
    root = prepare_data(tmp_path, files=MANIFEST, sources=[failing_source, good_source])
    assert root == tmp_path
    for f in MANIFEST:
        assert (raw_of(tmp_path) / f.name).read_bytes() == TINY[f.name]
    assert data_litter(tmp_path) == []
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
    assert data_litter(root) == []


def test_killed_fetch_leaves_nothing_a_rerun_trusts(tmp_path):
    root, marker = tmp_path / "data", tmp_path / "writing"
    child = start_stuck_fetch(root, marker)
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
        child.communicate()  # waits, and closes the pipes
    assert final_names(raw_of(root)) == []
    with pytest.raises(DataError, match="missing"):
        prepare_data(root, files=MANIFEST, sources=[])
    prepare_data(root, files=MANIFEST, sources=[good_source])  # the dead child's lock is gone
    for f in MANIFEST:
        assert (raw_of(root) / f.name).read_bytes() == TINY[f.name]
    assert data_litter(root) == []




def test_names_like_a_fetchs_temp_dirs_are_the_users(tmp_path):
    """Only temps a fetch recorded are swept: a user's `.fetch-*` file or folder is kept."""
    raw = raw_of(tmp_path)
    raw.mkdir(parents=True)
    (raw / ".fetch-notes").write_text("mine\n")
    (raw / ".fetch-drafts").mkdir()
    (raw / ".fetch-drafts" / "figure1.svg").write_text("<svg/>\n")
    prepare_data(tmp_path, files=MANIFEST, sources=[good_source])
    assert (raw / ".fetch-notes").read_text() == "mine\n"
    assert (raw / ".fetch-drafts" / "figure1.svg").read_text() == "<svg/>\n"
    for f in MANIFEST:
        assert (raw / f.name).read_bytes() == TINY[f.name]

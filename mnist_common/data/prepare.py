"""Make `<root>/MNIST/raw/` hold the four verified files: use what is there, else fetch.

Local files come first: uncompressed ones are verified, `.gz` ones decompressed and verified.
Whatever is still missing comes from the first source that delivers it, written into a temp dir
under the raw dir, verified, and renamed into place. Concurrent prepares serialise on a lock.
"""

import contextlib
import os

from mnist_common.data.idx import MNIST_FILES, idx_problem, short_error
from mnist_common.data.local import (
    TEMP_PREFIX,
    given_data_dir,
    install,
    missing_files,
    raw_dir,
    resolve_data_dir,
    unpack_gz,
)
from mnist_common.data.sources import default_sources, is_disk_full, source_label
from mnist_common.errors import DataError
from mnist_common.fileio import check_path, exclusive_lock, say
from mnist_common.ownership import make_temp_dir, remove_leftovers, remove_temp_dir

LOCK_NAME = ".mnist.lock"


def _unwritable(root, err=None):
    """The one-line error for a data dir we cannot write into."""
    reason = err.strerror.lower() if err is not None and err.strerror else "not writable"
    return DataError(
        f"cannot write the MNIST files into {root} ({reason}); pass --data-dir a writable "
        "directory or set MNIST_DATA_DIR"
    )


def _not_a_directory(path):
    """The one-line error for a data dir path that is taken by a non-directory."""
    return DataError(
        f"data dir {path} is not a directory; pass --data-dir a directory or set MNIST_DATA_DIR"
    )


def _disk_full(raw, files):
    """The one-line error for a full disk (or quota) while writing `files` into `raw`."""
    megabytes = -(-sum(f.size for f in files) // 1_000_000)
    return DataError(
        f"no space left on the disk holding {raw} for the MNIST files (about {megabytes} MB); "
        "free some space or pass --data-dir a directory on another disk"
    )


def _write_error(root, raw, files, err):
    """The one-line error for an OSError met while writing `files` under `root`."""
    return _disk_full(raw, files) if is_disk_full(err) else _unwritable(root, err)


def _missing(raw, files):
    """The one-line error for files that are missing and that no source may fetch."""
    names = ", ".join(f.name for f in files)
    return DataError(f"MNIST files missing: put {names} (uncompressed or .gz) under {raw}/")


def _make_raw_dir(root, raw, files):
    """Create `raw` (and `root`) or explain in one line why it cannot be."""
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _not_a_directory(root) from None
    except OSError as err:
        raise _write_error(root, raw, files, err) from None
    if not os.access(raw, os.W_OK | os.X_OK) or not os.access(root, os.W_OK | os.X_OK):
        raise _unwritable(root)


def _lock(stack, root, progress):
    """Enter the data dir's exclusive lock on `stack`, waiting (and saying so) if it is held."""

    def on_wait():
        if progress:
            say(f"waiting for another process fetching MNIST into {root}…")

    try:
        stack.enter_context(exclusive_lock(root / LOCK_NAME, wait=True, on_wait=on_wait))
    except OSError as err:
        raise _unwritable(root, err) from None


def _fetch_with(source, raw, missing):
    """Run one source into a temp dir under `raw`; verify everything, then rename into place."""
    tmp = make_temp_dir(raw, TEMP_PREFIX)  # recorded: only the project's temps are swept
    try:
        source(tmp, tuple(missing))
        for expected in missing:
            problem = idx_problem(tmp / expected.name, expected)
            if problem is not None:
                raise DataError(f"the fetched {expected.name} {problem}")
        install(tmp, raw, missing)
    finally:
        remove_temp_dir(tmp)


def _fetch(raw, missing, sources, progress):
    """Try `sources` in order until one delivers `missing`; one DataError if none does."""
    failures = []
    for source in sources:
        label = source_label(source)
        if progress:
            say(f"fetching MNIST via {label}…")
        try:
            _fetch_with(source, raw, missing)
        except Exception as err:
            # The next source would write to the same full disk.
            if is_disk_full(err):
                raise _disk_full(raw, missing) from None
            failures.append(f"{label} failed: {short_error(err)}")
            if progress:
                say(f"  {failures[-1]}")
            continue
        if progress:
            say(f"MNIST files verified in {raw}")
        return
    names = ", ".join(f.name for f in missing)
    raise DataError(
        f"could not fetch MNIST ({'; '.join(failures)}); put {names} (uncompressed or .gz) "
        f"under {raw}/ and rerun"
    )


def _fill_locked(root, raw, files, sources, progress):
    """Under the lock: recheck, decompress local `.gz` files, then fetch what is still missing."""
    remove_leftovers(raw)  # temps a killed fetch recorded, never a name pattern
    try:
        # Another process may have fetched the files while we waited for the lock.
        missing = unpack_gz(raw, missing_files(raw, files), progress)
    except OSError as err:
        raise _write_error(root, raw, files, err) from None
    if not missing:
        return
    if not sources:
        raise _missing(raw, missing)
    _fetch(raw, missing, sources, progress)


def prepare_data(data_dir=None, *, files=MNIST_FILES, sources=None, progress=False):
    """Make sure `<root>/MNIST/raw/` holds `files`, verified; return the root for torchvision.

    Files already present are verified and used (a damaged one is a DataError, never
    overwritten); `.gz` copies of missing ones are decompressed and verified; the rest come from
    the first of `sources` that delivers all of them (default: torchvision's mirrors, then the
    registry copy). Each source is called as `source(tmp_dir, missing_files)` and must write
    those files into `tmp_dir`. A data dir given as `<root>/MNIST/raw` or `<root>/MNIST` that
    already holds the files resolves to `<root>`.
    """
    given = given_data_dir(data_dir)
    check_path(given, "--data-dir")
    root = resolve_data_dir(data_dir, files)
    raw = raw_dir(root)
    if root != given and progress:
        say(f"using {root} as the data root: {raw} already holds MNIST files")
    if root.exists() and not root.is_dir():
        raise _not_a_directory(root)
    missing = missing_files(raw, files)
    if not missing:
        return root
    if sources is None:
        sources = default_sources(progress)
    if not sources and not any(os.path.lexists(raw / (f.name + ".gz")) for f in missing):
        raise _missing(raw, missing)
    _make_raw_dir(root, raw, missing)
    with contextlib.ExitStack() as stack:
        _lock(stack, root, progress)
        _fill_locked(root, raw, files, sources, progress)
    return root

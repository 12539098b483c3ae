"""The one rule for what the project may replace or delete: only what it wrote, as it wrote it.

Every file and folder the project writes is recorded, before it lands, in the ownership record
of its folder, `.mnist-cnn-parity.json`: a file under its name with the SHA-256 of its content,
a folder under its name (its own record covers what it holds), a temp file or folder under its
name before it is created. `may_replace` is the rule, and every writer asks it before it
replaces or deletes a path: a path is the project's if it is absent, or if the record beside it
names it and it is still what the project wrote — a regular file with a recorded hash, a temp
it created, or a folder whose every entry is the project's. Anything else (a user's file, a
link, a file edited since, a folder holding a user's file) is never touched, whatever its name.
The record and its temp file (`RECORD_TEMP`) belong to this module, whose writers
(`owned_path`, `write_owned`, `adopt_file`, `make_owned_dir`, `make_temp_dir`,
`remove_temp_dir`, `rename_owned`, `remove_owned`, `remove_leftovers`) keep the record true as
they go.
"""

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path

from mnist_common.errors import UsageError, short_path
from mnist_common.fileio import atomic_path, check_path, sha256_file, write_bytes_atomic

RECORD_NAME = ".mnist-cnn-parity.json"
RECORD_TEMP = f"{RECORD_NAME}.tmp"  # the record's own temp file, reused by its next write
RECORD_FORMAT = "mnist-cnn-parity files, version 2"


def _empty():
    return {"files": {}, "folders": [], "temps": []}


def _read_record(directory):
    """The record of `directory` ({} parts when there is none), or None if it is not ours."""
    path = Path(directory) / RECORD_NAME
    if not os.path.lexists(path):
        return _empty()
    if path.is_symlink():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    parts = _empty()
    if not all(isinstance(record.get(key), type(empty)) for key, empty in parts.items()):
        return None
    return {key: record[key] for key in parts}


def may_replace(path):
    """Whether the project may replace or delete `path`: the one rule (see the module's doc)."""
    path = Path(path)
    if not os.path.lexists(path):
        return True
    record = _read_record(path.parent)
    if record is None or path.is_symlink():
        return False
    if path.name in record["temps"]:
        return path.is_file() or path.is_dir()
    if path.is_dir():
        return path.name in record["folders"] and _holds_only_ours(path)
    return path.is_file() and sha256_file(path) in record["files"].get(path.name, ())


def _holds_only_ours(directory):
    try:
        entries = list(directory.iterdir())
    except OSError:
        return False
    return _read_record(directory) is not None and all(
        entry.name in (RECORD_NAME, RECORD_TEMP) or may_replace(entry) for entry in entries)


def _add(names, name):
    if name not in names:
        names.append(name)


def _readable_record(directory):
    """`directory`'s record; a file in its place that is not one is a UsageError."""
    record = _read_record(directory)
    if record is None:
        raise UsageError(f"{short_path(Path(directory) / RECORD_NAME)} is not this project's "
                         f"record of the files it wrote; move it away or choose another "
                         f"directory")
    return record


def _update(directory, change):
    """Apply `change(record)` to `directory`'s record and write it back whole."""
    directory = Path(directory)
    record = _readable_record(directory)
    present = [n for n in (*record["files"], *record["folders"], *record["temps"])
               if os.path.lexists(directory / n)]
    record["files"] = {n: h for n, h in record["files"].items() if n in present}
    record["folders"] = [n for n in record["folders"] if n in present]
    record["temps"] = [n for n in record["temps"] if n in present]
    change(record)
    if not any(record.values()):  # nothing left to record: no record (a failed write adds none)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / RECORD_NAME)
        return
    text = json.dumps({"format": RECORD_FORMAT, **record}, indent=1, sort_keys=True) + "\n"
    # One fixed temp name, reused (and so cleared) by the next write after a killed writer.
    write_bytes_atomic(directory / RECORD_NAME, text.encode(), tmp=directory / RECORD_TEMP,
                       reuse=True)


def unowned(directory, names):
    """Those of `names` in `directory` that the project may not replace."""
    return [name for name in names if not may_replace(Path(directory) / name)]


def refuse_unowned(directory, names, where, writer="this project"):
    """A UsageError naming every one of `names` in `directory` the project may not replace."""
    if os.path.isdir(directory):
        _readable_record(directory)
    strangers = unowned(directory, names)
    if strangers:
        verb, them = ("was", "it") if len(strangers) == 1 else ("were", "them")
        raise UsageError(f"{where}: {', '.join(strangers)} {verb} not written by {writer} "
                         f"(not in its {RECORD_NAME}); move {them} away or choose another "
                         f"directory")


def check_out_file(path, flag, what):
    """Fail before any work if `flag`'s file cannot be written, or names a file the project may
    not replace (the user's): `what` says which outputs it does replace."""
    path = Path(path)
    check_path(path, flag)
    if path.is_dir():
        raise UsageError(f"{flag} {short_path(path)}: is a directory")
    if not may_replace(path):
        raise UsageError(f"{flag} {short_path(path)}: exists and is not {what}; choose a new file "
                         f"name (only such outputs are replaced)")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {short_path(path)}: directory {short_path(parent)} does not "
                         f"exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {short_path(path)}: directory {short_path(parent)} is not "
                         f"writable")


def _refuse(path):
    if not may_replace(path):
        raise UsageError(f"{short_path(path)}: not written by this project, or changed since; it "
                         f"is kept (move it away)")


@contextlib.contextmanager
def owned_path(path):
    """Yield a temp path beside `path`; when the block ends, the temp file replaces `path` whole
    (`fileio.atomic_path`), its hash recorded before the rename. A `path` the project may not
    replace is a UsageError; a failed write an OSError."""
    path = Path(path)
    directory, name = path.parent, path.name
    _refuse(path)
    tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    _update(directory, lambda record: _add(record["temps"], tmp.name))
    digest = []

    def record_hash(finished):  # the old hash stays too: a kill before the rename keeps it ours
        digest.append(sha256_file(finished))
        _update(directory, lambda record: record["files"].setdefault(name, []).append(digest[0]))

    try:
        with atomic_path(path, before_replace=record_hash, tmp=tmp) as written:
            yield written
    except BaseException:
        with contextlib.suppress(OSError):  # the temp is gone: the record forgets it
            _update(directory, lambda record: None)
        raise
    _update(directory, lambda record: record["files"].__setitem__(name, digest))


def write_owned(path, data):
    """Write bytes (or text) to `path` through `owned_path`."""
    with owned_path(path) as tmp:
        Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data)


def adopt_file(source, target):
    """Rename the project's file `source` to `target` (another folder of the same disk), its hash
    recorded beside `target` before the rename, as `owned_path` does."""
    source, target = Path(source), Path(target)
    _refuse(target)
    digest = sha256_file(source)
    _update(target.parent, lambda record: record["files"].setdefault(target.name, []).append(
        digest))
    os.replace(source, target)
    _update(target.parent, lambda record: record["files"].__setitem__(target.name, [digest]))
    _update(source.parent, lambda record: None)  # forget the source


def make_owned_dir(path):
    """Create the folder `path`, recorded as the project's (an earlier one of ours is removed)."""
    path = Path(path)
    remove_owned(path)
    _refuse(path)
    _update(path.parent, lambda record: _add(record["folders"], path.name))
    path.mkdir()


def make_temp_dir(parent, prefix):
    """A new scratch folder `parent/<prefix><random>`, recorded as a temp before it exists."""
    path = Path(parent) / f"{prefix}{secrets.token_hex(4)}"
    _update(parent, lambda record: _add(record["temps"], path.name))
    path.mkdir()
    return path


def remove_temp_dir(path):
    """Delete the scratch folder `path` that this very call made with `make_temp_dir` (so it
    holds only what the call put there), best effort even on a full disk; then forget it."""
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        _update(Path(path).parent, lambda record: None)  # drops names no longer on disk


def rename_owned(source, target):
    """Rename the project's folder `source` to `target` in the same folder, replacing an
    earlier `target` of the project's."""
    source, target = Path(source), Path(target)
    remove_owned(target)
    _refuse(target)
    _update(target.parent, lambda record: _add(record["folders"], target.name))
    os.replace(source, target)

    def forget_source(record):
        record["folders"] = [n for n in record["folders"] if n != source.name]

    _update(target.parent, forget_source)


def remove_owned(path):
    """Delete `path` if the project may (the rule); True if it is gone."""
    path = Path(path)
    if not os.path.lexists(path):
        return True
    if not may_replace(path):
        return False
    if path.is_dir():  # first out of the way, as a temp: a kill half-way leaves a leftover
        doomed = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        _update(path.parent, lambda record: _add(record["temps"], doomed.name))
        os.replace(path, doomed)
        shutil.rmtree(doomed)
    else:
        path.unlink()

    def forget(record):
        record["files"].pop(path.name, None)
        record["folders"] = [n for n in record["folders"] if n != path.name]

    _update(path.parent, forget)
    return True


def remove_leftovers(directory):
    """Delete the temp files and folders killed writers left in `directory` (those recorded)."""
    record = _read_record(directory)
    for name in record["temps"] if record else ():
        remove_owned(Path(directory) / name)

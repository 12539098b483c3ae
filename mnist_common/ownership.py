"""Which files in a directory a run of this project wrote: the only ones a run may replace.

A run dir may hold the user's own files. Before a run writes an output it records the
output's SHA-256 in `<dir>/.run-files.json` (the record is written before the file is
renamed into place, so a run killed in between leaves a record that still covers what is on
disk). A file is the project's if the record names it with its current content's hash; every
other file, whatever its name, is the user's and is never replaced or deleted.
"""

import json
import os
from pathlib import Path

from mnist_common.errors import UsageError
from mnist_common.fileio import foreign, sha256_file, write_text_atomic

RECORD_NAME = ".run-files.json"
RECORD_FORMAT = "mnist-cnn-parity run files, version 1"


def _read_record(directory):
    """{name: [sha256, ...]} of the record in `directory`; {} if there is none."""
    path = Path(directory) / RECORD_NAME
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError):
        record = None
    if (not isinstance(record, dict) or record.get("format") != RECORD_FORMAT
            or not isinstance(record.get("files"), dict)):
        raise UsageError(f"{path} is not this project's record of the files a run wrote; "
                         f"move it away or choose another directory")
    return {name: list(hashes) for name, hashes in record["files"].items()
            if isinstance(hashes, list)}


def _write_record(directory, files):
    text = json.dumps({"format": RECORD_FORMAT, "files": files}, indent=1, sort_keys=True)
    write_text_atomic(Path(directory) / RECORD_NAME, text + "\n")


def foreign_files(directory, names):
    """Those of `names` that exist in `directory` but were not written there by a run."""
    directory = Path(directory)
    if not any(os.path.lexists(directory / name) for name in names):
        return []
    record = _read_record(directory)
    return [name for name in names if foreign(
        directory / name, lambda path, name=name: sha256_file(path) in record.get(name, ()))]


def refuse_foreign(directory, names, where):
    """A UsageError naming every file of `names` in `directory` that a run did not write."""
    foreign = foreign_files(directory, names)
    if foreign:
        verb, them = ("was", "it") if len(foreign) == 1 else ("were", "them")
        raise UsageError(f"{where}: {', '.join(foreign)} {verb} not written by a run of this "
                         f"project (not in its {RECORD_NAME}); move {them} away or choose "
                         f"another directory")


def recorder(directory, name):
    """A `before_replace` for `fileio.atomic_path`: records the finished temp file's hash as
    `name`'s before the rename, so the file is never on disk unrecorded."""
    directory = Path(directory)

    def record_content(tmp):
        digest = sha256_file(tmp)
        record = _read_record(directory)
        if digest not in record.get(name, ()):
            record[name] = [*record.get(name, ()), digest]
            _write_record(directory, record)

    return record_content


def forget_replaced(directory, names):
    """Keep in the record only the current hash of each of `names` (after all were written)."""
    directory = Path(directory)
    record = _read_record(directory)
    for name in names:
        if (directory / name).is_file():
            record[name] = [sha256_file(directory / name)]
    _write_record(directory, record)

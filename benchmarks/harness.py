"""What the benchmark may do to the disk, how it runs a process, and how it stops.

Rule: in its out-dir the benchmark replaces only files a benchmark run wrote: a results JSON
(recognised by its schema key), and beside one of them its report (`.md` starting with the
report's title, a Matplotlib `.png`). Anything else under a name it would write is refused in
one line before anything is measured. While it measures, each finished figure goes into
`<device>.partial.json`; only a complete run replaces `<device>.json`, `.md` and `.png` (and
then removes the partial file), so a stopped run never replaces a complete result.
"""

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import REPO
from mnist_common.errors import UsageError
from mnist_common.fileio import write_text_atomic

SCHEMA = "mnist-cnn-benchmark/1"
SCALING_SCHEMA = "mnist-cnn-scaling/1"
_TITLES = (b"# MNIST CNN benchmark", b"# Data-parallel scaling")  # report.py's first lines
_MATPLOTLIB_PNG = b"Software\x00Matplotlib"  # the tEXt chunk Matplotlib writes into a PNG


def read_results(path):
    """The results (or scaling) dict in `path`, or None when it is not one of this benchmark's."""
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if isinstance(results, dict) and results.get("schema") in (SCHEMA, SCALING_SCHEMA):
        return results
    return None


def ours(path):
    """True when `path` is free, or holds what this benchmark writes under that name."""
    path = Path(path)
    if not os.path.lexists(path):
        return True
    if path.is_symlink() or not path.is_file():
        return False
    if path.suffix == ".json":
        return read_results(path) is not None
    if read_results(path.with_suffix(".json")) is None:
        return False
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if path.suffix == ".md":
        return head.startswith(_TITLES)
    return path.suffix == ".png" and head.startswith(b"\x89PNG") and _MATPLOTLIB_PNG in head


def output_names(stem):
    return [f"{stem}.json", f"{stem}.md", f"{stem}.png", f"{stem}.partial.json"]


def refuse_strangers(directory, names, flag="--out-dir"):
    """A UsageError naming the files among `names` in `directory` this benchmark did not write."""
    try:
        strangers = [name for name in names if not ours(Path(directory) / name)]
    except OSError as err:
        raise UsageError(f"{flag} {directory}: cannot read it ({err.strerror or err})") from None
    if strangers:
        raise UsageError(f"{flag} {directory}: {', '.join(strangers)} "
                         f"{'is' if len(strangers) == 1 else 'are'} not this benchmark's output "
                         f"and would be replaced; move {'it' if len(strangers) == 1 else 'them'} "
                         f"or choose another {flag}")


def _missing_parents(path):
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def prepare_out_dir(path, names):
    """Check `names` in `path`, create it (probed by a real write); the directories created,
    deepest first. On a failure nothing created is left behind."""
    path = Path(path)
    refuse_strangers(path, names)
    created = []
    try:
        created = _missing_parents(path.absolute())
        path.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=path, prefix=".probe-").close()
    except OSError as err:
        remove_if_empty(created)
        raise UsageError(f"--out-dir {path}: cannot write there ({err.strerror or err})") from None
    return created


def scratch_dir():
    """--quick without --out-dir: a new directory outside the repository."""
    return Path(tempfile.mkdtemp(prefix="mnist-bench-quick-"))


def remove_if_empty(directories):
    """Remove the directories a run created, deepest first, where it left nothing in them."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


def write_json(path, results):
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")


def discard(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def run_process(words, env=None, timeout=None):
    """The one way the benchmark runs a program: from the repository root, no stdin, output
    captured. Returns (subprocess.CompletedProcess, wall seconds)."""
    start = time.perf_counter()
    done = subprocess.run(words, cwd=REPO, env=env, stdin=subprocess.DEVNULL, text=True,
                          capture_output=True, timeout=timeout)
    return done, time.perf_counter() - start


def last_line(done):
    """`exit status N: <last stderr line>` of a failed process."""
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return f"exit status {done.returncode}: {last}"[:500]


class Terminated(KeyboardInterrupt):
    """SIGTERM (as from `timeout`), raised like Ctrl-C's KeyboardInterrupt: no section catches
    it."""


def _terminate(signum, frame):
    raise Terminated


def handle_sigterm():
    signal.signal(signal.SIGTERM, _terminate)


def stop_signal(err):
    """The signal that `err` stands for (SIGINT, SIGTERM, or the training loop's exit after
    one), or None."""
    if isinstance(err, Terminated):
        return signal.SIGTERM
    if isinstance(err, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(err, SystemExit) and err.code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        return signal.Signals(err.code - 128)
    return None

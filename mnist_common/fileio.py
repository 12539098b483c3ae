"""File utilities, one home each: atomic writes, fsync, hashing, locks, status lines.

A full disk (or any other write failure) surfaces from here as `OSError`, whatever library did
the writing: `atomic_path` turns a failed write inside it into an `OSError` carrying the errno
when one is known, so callers catch one exception type and report it in one line.
"""

import contextlib
import errno
import hashlib
import os
import sys
import tempfile
from pathlib import Path

from mnist_common.errors import UsageError, escaped, first_line, short_path

try:
    import fcntl
except ImportError:  # not POSIX: concurrent users of one directory are then not detected
    fcntl = None

_UMASK = os.umask(0)
os.umask(_UMASK)


def check_path(path, flag):
    """A path the system cannot even look up (a name too long, say) is the user's error."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as err:
        raise UsageError(f"{flag} {short_path(path)}: {err.strerror}") from None


def say(message):
    """A status line on stderr (stdout is for results); a path's newline shown escaped."""
    print(escaped(message), file=sys.stderr, flush=True)


def sha256_file(path):
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path):
    """Flush a file's data to disk, so a rename cannot outrun it."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path):
    """Flush a directory's entries, so a rename in it survives a power cut (best effort)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is atomic regardless
    finally:
        os.close(fd)


def as_os_error(err):
    """`err` as an OSError: library write errors (safetensors, PIL) often are not one."""
    if isinstance(err, OSError):
        return err
    text = str(err)
    if "No space left" in text or "os error 28" in text:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return OSError(errno.EIO, first_line(err))


@contextlib.contextmanager
def atomic_path(path, before_replace=None, tmp=None, reuse=False):
    """Yield a temp path beside `path`; on success it replaces `path`, on failure it is removed.

    `tmp`: the temp file's name (created here, never through a link; by default a fresh
    `.NAME.*.tmp`); `reuse`: truncate a `tmp` that is already there instead of failing.
    `before_replace(tmp)`, if given, runs on the finished temp file just before the rename.

    Any exception raised by a writer inside the block (other than an interrupt) is re-raised
    as an OSError, so a full disk reads the same whichever library hit it.
    """
    path = Path(path)
    if tmp is None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    else:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if reuse else os.O_EXCL)
        fd = os.open(tmp, flags, 0o600)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a normal file respects the umask
        fsync_file(tmp)
        if before_replace is not None:
            before_replace(Path(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, Exception) and not isinstance(err, OSError):
            raise as_os_error(err) from err
        raise


def write_bytes_atomic(path, data, **options):
    """Write `data` to `path` so that readers see the old file or the whole new one
    (`options`: as `atomic_path`'s)."""
    with atomic_path(path, **options) as tmp:
        Path(tmp).write_bytes(data)


@contextlib.contextmanager
def exclusive_lock(lock_path, *, wait=False, on_wait=None):
    """Hold an exclusive flock on `lock_path` (created if missing) for the block.

    With `wait` False a lock held by another process raises BlockingIOError; with `wait` True
    this blocks, calling `on_wait()` once first. The kernel releases the lock if we are killed.
    A symbolic link at `lock_path` is refused (UsageError), never followed.
    """
    try:  # never through a link: a dangling one would create a file where it points
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as err:
        if not os.path.islink(lock_path):
            raise
        raise UsageError(f"{short_path(lock_path)} is a symbolic link, not a lock file of this "
                         f"project: remove it ({err.strerror})") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


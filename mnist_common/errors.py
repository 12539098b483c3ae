"""Errors a user can cause, and the one place that turns them into a one-line message."""

import argparse
import sys


class UsageError(Exception):
    """A mistake the user can fix (bad flag, bad file, missing data): one line, exit status 2."""


class DataError(UsageError):
    """The MNIST files are missing, damaged, or could not be fetched from any source."""


def first_line(err):
    """An exception's message as one line (its first), or its type's name if it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def short_path(path, limit=160):
    """A path as a message shows it: whole, or its two ends when it is very long."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2 - 2]}...{text[-(limit // 2 - 1):]}"


def describe(err):
    """`Type: first line` of an exception (the type alone if it has no message)."""
    text = first_line(err)
    return text if text == type(err).__name__ else f"{type(err).__name__}: {text}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are a UsageError (one line, no usage block), not a printed usage."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def run_cli(main, argv=None, prog=None):
    """Run `main(argv)`, reporting a UsageError as `prog: error: message` on stderr, exit 2.

    Ctrl-C that `main` did not handle itself ends with `prog: interrupted` and status 130.
    """
    name = prog or sys.argv[0]
    try:
        return main(argv)
    except UsageError as err:
        print(f"{name}: error: {first_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None

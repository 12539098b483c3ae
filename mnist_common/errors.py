"""Errors a user can cause, and the one place that turns them into a one-line message."""

import sys


class UsageError(Exception):
    """A mistake the user can fix (bad flag, bad file, missing data): one line, exit status 2."""


class DataError(UsageError):
    """The MNIST files are missing, damaged, or could not be fetched from any source."""


def run_cli(main, argv=None, prog=None):
    """Run `main(argv)`, reporting a UsageError as `prog: error: message` on stderr, exit 2."""
    try:
        return main(argv)
    except UsageError as err:
        name = prog or sys.argv[0]
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"{name}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None

"""`python -m mnist_common.data [--data-dir DIR] [--no-progress]`: prepare MNIST, print the root.

A DataError (missing, damaged or unfetchable files, a bad data dir, a full disk) becomes one line
on stderr and exit status 2.
"""

from mnist_common.data.idx import PROG
from mnist_common.data.local import cache_data_dir
from mnist_common.data.prepare import prepare_data
from mnist_common.errors import ArgumentParser, escaped, run_cli


def build_parser():
    """The command line: the data dir and whether to print status lines."""
    parser = ArgumentParser(
        prog=PROG,
        description="Find, fetch and verify the four MNIST files; print the data root.",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help=f"data root; files go in DIR/MNIST/raw/ (default: $MNIST_DATA_DIR if set, "
        f"else {cache_data_dir()})",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="print no status lines on stderr"
    )
    return parser


def _main(argv):
    """Parse the flags, prepare the data, print the root."""
    args = build_parser().parse_args(argv)
    root = prepare_data(args.data_dir, progress=not args.no_progress)
    print(escaped(root))  # any byte of the path survives any stdout encoding
    return 0


def main(argv=None):
    """Run the command line; a DataError becomes one line on stderr and exit status 2."""
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    raise SystemExit(main())

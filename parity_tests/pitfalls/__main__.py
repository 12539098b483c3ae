"""Every porting mistake of the catalogue, measured against the shipped torch side.

    python -m parity_tests.pitfalls [--only NAME,...] [--out FILE.json] [--no-progress]
    python -m parity_tests.pitfalls --merge PART.json ... [--out FILE.json]

For each mistake (a named variant of the Flax side, parity_tests/pitfalls/catalogue.py) and
for the shipped code (the zero line), from torch's seed-0 weights on the seed-0 batches:
  - the error at load time, if any;
  - the logits' max |difference| at identical weights;
  - the first step's loss and gradients (difference relative to torch's);
  - the weights' |difference| after 10 and 100 steps;
  - test accuracy after one epoch (235 steps of 256) and the test images classified
    differently from torch, beside the noise floor: torch against itself in its other
    memory layout;
  - the parity tests whose assertions fail (the targeted checks run for real, the
    trajectory and accuracy bounds read from the runs).
Prints a Markdown table; --out also writes the JSON and, beside it, the table (FILE.md).
About two minutes of CPU per mistake.
"""

import argparse
import datetime
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

from mnist_common.errors import ArgumentParser, UsageError, run_cli
from mnist_common.ownership import check_out_file, write_owned

PROG = "python -m parity_tests.pitfalls"
RECORD_KEYS = ("command", "date", "machine", "commit", "seconds", "noise", "rows")
TABLE_START = "<!-- written by python -m parity_tests.pitfalls -->"


def check_outputs(out):
    """Refuse, before the minutes of measuring, a file that is not an earlier output."""
    check_out_file(out, "--out", "an earlier output of this command")
    check_out_file(Path(out).with_suffix(".md"), "--out", "a table this command wrote")


def commit():
    """The repository's commit (with +dirty when the tree has changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def measure_all(names, progress, keep=lambda noise, rows: None):
    """{noise, rows}: the shipped code first, then each mistake and control asked for;
    `keep(noise, rows)` after each row (a long run's rows survive an interruption)."""
    from mnist_common import data, reporting

    from . import catalogue, measure
    from .checks import Inputs

    inputs = Inputs()
    splits = data.load_arrays(data.prepare_data(None, progress=progress), train=True), \
        data.load_arrays(data.prepare_data(None, progress=False), train=False)
    chosen = [catalogue.SHIPPED] + [m for m in (*catalogue.MISTAKES, *catalogue.CONTROLS)
                                    if names is None or m.name in names]
    bar = reporting.progress_bar(None, total=len(chosen) + 1, desc="pitfalls",
                                 enabled=progress, leave=True)
    bar.set_postfix_str("torch, twice")
    ref = measure.reference(inputs.weights, splits)
    noise = measure.noise_row(inputs.weights, ref, splits[1][1])
    bar.update(1)
    rows = []
    for mistake in chosen:
        bar.set_postfix_str(mistake.name)
        try:
            row = measure.measure(mistake, inputs.weights, splits, ref, noise, inputs)
            row["failing_tests"] = measure.failing_tests(row)
        except Exception:  # a fault of the measurement: the other rows still count
            traceback.print_exc()
            row = {"name": mistake.name, "measurement_failed": traceback.format_exc(limit=1)}
        rows.append(row)
        keep(noise, rows)
        bar.update(1)
    bar.close()
    return noise, rows


def main(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                            epilog=__doc__.split("\n\n", 2)[2],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, metavar="NAME,...",
                        help="measure only these mistakes (the shipped code always)")
    parser.add_argument("--out", default=None, metavar="FILE.json",
                        help="also write the results as JSON and the table as FILE.md")
    parser.add_argument("--merge", nargs="+", default=None, metavar="FILE.json",
                        help="measure nothing: merge the outputs of runs of disjoint --only "
                             "sets (one commit) into one table")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide the progress bar")
    args = parser.parse_args(argv)
    code = commit()  # the tree as the command starts, before the minutes of imports
    from benchmarks import cpu_model

    from . import catalogue, merge

    names = None
    if args.only:
        names = set(args.only.split(","))
        unknown = sorted(names - set(catalogue.BY_NAME))
        if unknown:
            raise UsageError(f"--only: unknown mistake(s) {', '.join(unknown)} (known: "
                             f"{', '.join(catalogue.BY_NAME)})")
    if args.out:
        check_outputs(args.out)
    if args.merge:
        record = merge.merge(args.merge, RECORD_KEYS)
        publish(record, args.out)
        return
    start = time.perf_counter()
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])

    def record_of(noise, rows):
        return {"command": command, "date": datetime.datetime.now(datetime.timezone.utc)
                .strftime("%Y-%m-%d %H:%M UTC"), "machine": cpu_model(), "commit": code,
                "seconds": round(time.perf_counter() - start), "noise": noise, "rows": rows}

    def keep(noise, rows):
        if args.out:
            write(args.out, json.dumps(record_of(noise, rows), indent=1) + "\n")

    noise, rows = measure_all(names, args.progress and sys.stderr.isatty(), keep)
    publish(record_of(noise, rows), args.out)


def publish(record, out):
    """Print the table; with `out`, write the record and the table beside it."""
    from . import table

    text = "\n".join(table.markdown(record)) + "\n"
    print(text)
    if out:
        write(out, json.dumps(record, indent=1) + "\n")
        write(Path(out).with_suffix(".md"), f"{TABLE_START}\n{text}")


def write(path, text):
    """Write `path` atomically (after `check_outputs`); a failure is the user's error."""
    try:
        write_owned(path, text)
    except OSError as err:
        raise UsageError(f"--out {path}: cannot write it ({err.strerror})") from None

if __name__ == "__main__":
    run_cli(main, prog=PROG)

"""Every parity check's margin: what it measured, against which bound.

A test calls `check(name, measured, limit)`, which records the check and then asserts it: the
table's value is the asserted value by construction, and a failing check shows in the table too.
`pytest parity_tests` ends with the table (conftest.py's terminal summary);
`--parity-report DIR` also writes it as report.md and report.json, with the figures of
`report_figures.py`. `series` keeps the arrays a figure needs (the 100-step weight gaps).
"""

import json
import math
import os
from pathlib import Path

from mnist_common.errors import short_path
from mnist_common.ownership import unowned, write_owned

REPORT_FILES = ("report.md", "report.json", "trajectory.png", "referee.png")
RECORDS = []  # one dict per recorded check, in the order the tests ran
SERIES = {}  # figure data: name -> {label: list of floats}


KINDS = {"ceiling": "<=", "floor": ">="}


def check(name, measured, limit, *, kind="ceiling", group="", **details):
    """Record one check, then assert it: `measured` <= `limit` for a ceiling, >= for a floor.

    The value asserted is the float the table shows; details go to the JSON."""
    measured, limit = float(measured), float(limit)
    RECORDS.append({"check": name, "measured": measured, "bound": limit, "kind": KINDS[kind],
                    "group": group, **details})
    held = measured <= limit if kind == "ceiling" else measured >= limit
    assert held, f"{name}: {measured:.6g} is not {KINDS[kind]} {limit:.6g}"


def series(name, label, values):
    """Keep a named series of values for a figure."""
    SERIES.setdefault(name, {})[label] = [float(v) for v in values]


def margin(entry):
    """How far inside its bound a check is (negative: it failed), in the check's own units."""
    if entry["kind"] == ">=":
        return entry["measured"] - entry["bound"]
    return entry["bound"] - entry["measured"]


def fraction(entry):
    """measured / bound for a ceiling (bound / measured for a floor): 1 is the edge."""
    top, bottom = ((entry["bound"], entry["measured"]) if entry["kind"] == ">="
                   else (entry["measured"], entry["bound"]))
    if bottom == 0:
        return 0.0 if top == 0 else math.inf
    return top / bottom


def _number(value):
    if value == 0:
        return "0"
    if math.isinf(value):
        return "inf"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def table(entries=None):
    """The checks as rows of (check, measured, bound, margin, of bound)."""
    rows = []
    for entry in RECORDS if entries is None else entries:
        bound = f"{entry['kind']} {_number(entry['bound'])}"
        rows.append((entry["check"], _number(entry["measured"]), bound, _number(margin(entry)),
                     f"{fraction(entry):.2f}"))
    return rows


HEADER = ("check", "measured", "bound", "margin", "used")


def text_table(entries=None):
    """The table as aligned text lines, for the terminal."""
    rows = [HEADER, *table(entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
            for row in rows]


def _markdown_row(cells):
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def markdown_table(entries=None):
    lines = [_markdown_row(HEADER), "|" + "---|" * len(HEADER)]
    return lines + [_markdown_row(row) for row in table(entries)]


SHARE_HEADER = ("check", "measured share of the bound", "a 1 % error's share")


def share_table(entries=None):
    """The referee's checks with a 1 % error's share of the bound beside the measured share:
    above 1, a 1 % error of that tensor fails the check."""
    lines = [_markdown_row(SHARE_HEADER), "|" + "---|" * len(SHARE_HEADER)]
    for entry in RECORDS if entries is None else entries:
        if "one_percent_share" in entry:
            lines.append(_markdown_row((entry["check"], _number(entry["measured"]),
                                        _number(entry["one_percent_share"]))))
    return lines if len(lines) > 2 else []


def refusal(directory):
    """The one-line reason a report may not be written into `directory`, or None."""
    path = Path(directory)
    # The nearest thing that exists on the way down must be a folder to create or write into.
    existing = next((p for p in (path, *path.parents) if os.path.lexists(p)), None)
    if existing is not None and not existing.is_dir():
        where = "is" if existing == path else f"lies under {short_path(existing)}, which is"
        return f"--parity-report {short_path(path)}: {where} not a directory"
    strangers = unowned(directory, REPORT_FILES)
    if not strangers:
        return None
    return (f"--parity-report {directory}: {', '.join(strangers)} "
            f"{'was' if len(strangers) == 1 else 'were'} not written by a parity report; move "
            f"{'it' if len(strangers) == 1 else 'them'} or choose another directory")


def write_report(directory, environment):
    """report.md, report.json and the figures into `directory`, each file written whole; returns
    the paths written. A file there that a report did not write is a ValueError (nothing is
    written)."""
    from report_figures import draw_all  # matplotlib only when a report is asked for

    out = Path(directory)
    reason = refusal(out)
    if reason:
        raise ValueError(reason)
    out.mkdir(parents=True, exist_ok=True)
    entries = [{**e, "margin": margin(e),
                "used": fraction(e) if math.isfinite(fraction(e)) else None} for e in RECORDS]
    write_owned(out / "report.json", json.dumps(
        {"environment": environment, "checks": entries, "series": SERIES}, indent=1) + "\n")
    figures = draw_all(out, RECORDS, SERIES)
    failed = sum(margin(e) < 0 for e in RECORDS)
    lines = ["# Parity report", "", f"{len(RECORDS)} checks, {failed} outside their bound. "
             "`used` is measured / bound (bound / measured for a floor): 1 is the edge.", "",
             "Machine: " + environment, "", *markdown_table(), ""]
    shares = share_table()
    if shares:
        lines += ["## Referee checks: what they measured and what a 1 % error would be", "",
                  "Each share is |framework - referee| / bound at the worst element; a 1 % "
                  "error's share is 0.01 |referee| / bound where that is largest (over several "
                  "tensors, the smallest of theirs). The layer-alone rows (its own rounding) "
                  "and the Adam rows must reject a 1 % error and assert it; the whole-pass rows "
                  "of layers and gradients (float32 bound) carry every earlier layer's rounding "
                  "and are shown as they are.", "",
                  *shares, ""]
    lines += [f"![{f.stem}]({f.name})" for f in figures]
    write_owned(out / "report.md", "\n".join(lines) + "\n")
    return [out / "report.md", out / "report.json", *figures]

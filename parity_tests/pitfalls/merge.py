"""Several outputs of the command (disjoint `--only` sets run side by side) as one record."""

import json
from pathlib import Path

from mnist_common.errors import UsageError

from . import catalogue

# What may differ between two runs of the same row: its timing.
TIMINGS = ("seconds",)


def _same(a, b):
    return {k: v for k, v in a.items() if k not in TIMINGS} == \
        {k: v for k, v in b.items() if k not in TIMINGS}


def merge(paths, keys):
    """One record from the outputs at `paths`: one commit, one noise floor, every row once
    (rows measured twice, the shipped one in each output, must agree but for their timing)."""
    records = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise UsageError(f"--merge {path}: cannot read it ({err})") from None
        if not isinstance(record, dict) or sorted(record) != sorted(keys):
            raise UsageError(f"--merge {path}: not an output of this command")
        records.append(record)
    commits = {r["commit"] for r in records}
    if len(commits) != 1:
        raise UsageError(f"--merge: outputs of different commits ({', '.join(sorted(commits))})")
    if not all(_same(r["noise"], records[0]["noise"]) for r in records):
        raise UsageError("--merge: the outputs' noise floors differ (not the same runs)")
    rows = {}
    for record in records:
        for row in record["rows"]:
            if row["name"] in rows and not _same(rows[row["name"]], row):
                raise UsageError(f"--merge: row {row['name']} differs between the outputs")
            rows.setdefault(row["name"], row)
    order = list(catalogue.BY_NAME)
    return {"command": " & ".join(r["command"] for r in records),
            "date": max(r["date"] for r in records), "machine": records[0]["machine"],
            "commit": records[0]["commit"], "seconds": max(r["seconds"] for r in records),
            "noise": records[0]["noise"],
            "rows": sorted(rows.values(), key=lambda row: order.index(row["name"]))}

"""`python -m parity_tests.pitfalls`: its help, its one-line refusals before any measurement, and
a table rendered from a record (the measurement itself runs for minutes: docs/porting.md)."""

import json
from pathlib import Path

import pytest
from cli_helpers import assert_usage_error, run_in_process

from parity_tests.pitfalls import __main__ as pitfalls
from parity_tests.pitfalls import catalogue, table


def command(argv, capsys):
    return run_in_process(pitfalls.main, argv, pitfalls.PROG, capsys)


def test_help_names_the_columns_and_the_flags(capsys):
    code, out, _ = command(["--help"], capsys)
    assert code == 0
    for words in ("--only", "--out", "--no-progress", "noise floor", "load time"):
        assert words in out, words


def test_an_unknown_mistake_is_refused(capsys):
    code, _, err = command(["--only", "no_such_mistake"], capsys)
    assert_usage_error(code, err, pitfalls.PROG, "--only", "no_such_mistake")


@pytest.mark.parametrize("name, content", [("mine.json", '{"rows": []}\n'),
                                           ("mine.md", "# my notes\n")])
def test_out_never_replaces_a_users_file(tmp_path, capsys, name, content):
    (tmp_path / name).write_text(content)
    code, _, err = command(["--out", str(tmp_path / "mine.json")], capsys)
    assert_usage_error(code, err, pitfalls.PROG, "--out", "is not")
    assert (tmp_path / name).read_text() == content


def test_the_table_sorts_load_errors_first_and_keeps_the_zero_line_on_top():
    noise = {"name": "torch_other_layout", "what": "noise", "logits_max_abs": 0.0,
             "accuracy": 0.93, "torch_accuracy": 0.93, "differ_from_torch": 40,
             "first_10_losses_max_abs": 1e-6, "weights_10_max_abs": 1e-6,
             "weights_100_median": 1e-5, "weights_100_max_abs": 1e-3}
    quiet = {**noise, "name": "shipped", "own_initial_weights": False, "failing_checks": {},
             "failing_tests": [], "loss_1_rel": 0.0, "grads_1_rel": 0.0, "done_right": "x:1"}
    loud = {**quiet, "name": "loud", "accuracy": 0.5, "logits_max_abs": 1.0,
            "failing_checks": {"logits": "AssertionError"},
            "failing_tests": ["test_model.py::test_logits_match_on_identical_weights"]}
    broken = {"name": "broken", "what": "w", "load_error": "ScopeParamShapeError: shape",
              "done_right": "x:2",
              "failing_checks": {"logits": "ScopeParamShapeError"},
              "failing_tests": ["test_model.py::test_logits_match_on_identical_weights"]}
    record = {"date": "d", "machine": "m", "commit": "c", "command": "p", "seconds": 1,
              "noise": noise, "rows": [quiet, loud, broken]}
    rows = [line for line in table.markdown(record) if line.startswith("| ")][1:]
    assert [r.split("`")[1] for r in rows] == ["torch_other_layout", "shipped", "broken", "loud"]
    assert "load: `ScopeParamShapeError`" in rows[2] and "| logits |" in rows[3]
    assert "nowhere" in rows[1]


def test_every_mistake_has_a_name_the_command_accepts():
    assert set(catalogue.BY_NAME) >= {m.name for m in catalogue.MISTAKES}


def _part(tmp_path, name, rows, commit="abc"):
    record = {"command": f"p --only {name}", "date": "2026-01-01 00:00 UTC", "machine": "m",
              "commit": commit, "seconds": 5, "noise": {"differ_from_torch": 40}, "rows": rows}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(record))
    return str(path)


def test_merge_takes_each_row_once_in_catalogue_order(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pitfalls, "publish", lambda record, out: print(json.dumps(record)))
    shipped = {"name": "shipped", "accuracy": 0.9, "seconds": 1}
    a = _part(tmp_path, "a", [shipped, {"name": "loss_summed"}])
    b = _part(tmp_path, "b", [{**shipped, "seconds": 2}, {"name": "flatten_order"}])
    code, out, err = command(["--merge", a, b], capsys)
    assert code == 0, err
    merged = json.loads(out)
    assert [r["name"] for r in merged["rows"]] == ["shipped", "flatten_order", "loss_summed"]
    assert merged["commit"] == "abc" and " & " in merged["command"]


@pytest.mark.parametrize("change, words", [({"commit": "def"}, "different commits"),
                                           ({"accuracy": 0.8}, "row shipped differs")])
def test_merge_refuses_outputs_of_other_code_or_other_numbers(tmp_path, capsys, change, words):
    shipped = {"name": "shipped", "accuracy": 0.9}
    a = _part(tmp_path, "a", [shipped])
    b = _part(tmp_path, "b", [{**shipped, **{k: v for k, v in change.items() if k != "commit"}}],
              commit=change.get("commit", "abc"))
    code, _, err = command(["--merge", a, b], capsys)
    assert_usage_error(code, err, pitfalls.PROG, "--merge", words)


DOCS = Path(__file__).resolve().parent.parent / "docs"
MEASURED = ("accuracy", "differ_from_torch", "logits_max_abs", "weights_10_max_abs",
            "weights_100_median", "failing_tests")


def test_the_committed_table_measures_every_mistake_and_is_its_records_rendering():
    """docs/pitfalls.json holds a measured row for the shipped code, every mistake and every
    control (a load-time error is a measurement); docs/pitfalls.md and the table in
    docs/porting.md are that record's rendering, so no figure on the page can drift from it."""
    record = json.loads((DOCS / "pitfalls.json").read_text())
    rows = {row["name"]: row for row in record["rows"]}
    assert set(rows) == set(catalogue.BY_NAME), sorted(set(catalogue.BY_NAME) ^ set(rows))
    for name, row in rows.items():
        assert "measurement_failed" not in row, name
        wanted = ("load_error", "failing_tests") if "load_error" in row else MEASURED
        assert all(key in row for key in wanted), (name, sorted(set(wanted) - set(row)))
    lines = table.markdown(record)
    assert (DOCS / "pitfalls.md").read_text() == f"{pitfalls.TABLE_START}\n" + "\n".join(lines) \
        + "\n"
    assert "\n".join(lines[2:]) in (DOCS / "porting.md").read_text()


def test_the_pages_catalogue_points_at_each_mistakes_line_as_the_code_is_now():
    """docs/porting.md's catalogue names, per mistake, the file and line where the project does
    it right: the line `catalogue.where` finds in the code today."""
    page = (DOCS / "porting.md").read_text()
    for mistake in catalogue.MISTAKES:
        row = [line for line in page.splitlines()
               if line.startswith(f"| `{mistake.name}` | {mistake.area} |")]
        assert len(row) == 1, mistake.name
        assert row[0].endswith(f"| `{catalogue.where(mistake.done_right)}` |"), row[0]

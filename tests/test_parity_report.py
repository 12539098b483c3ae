"""`pytest parity_tests --parity-report DIR`: the margin table as report.md and report.json with
its figures, each file written whole, and never over a file a report did not write."""

import json
import subprocess
import sys

import pytest
from cli_helpers import REPO, cli_env

from mnist_common.ownership import RECORD_NAME

PARITY = REPO / "parity_tests"


@pytest.fixture
def margins(monkeypatch):
    """parity_tests' margins module (as its conftest imports it), with empty records."""
    monkeypatch.syspath_prepend(str(PARITY))
    import margins

    monkeypatch.setattr(margins, "RECORDS", [])
    monkeypatch.setattr(margins, "SERIES", {})
    return margins


def record_some(margins):
    margins.check("loss, max |Flax - torch|", 2e-7, 1e-5, group="training")
    margins.check("init: KS p-value", 0.3, 1e-3, kind="floor", group="init")
    for label in ("flax vs torch", "torch: reversed batches"):
        margins.series("trajectory", label, [1e-6 * (1 + i) for i in range(101)])
    margins.check("step 100 median", 3e-5, 9e-5, group="trajectory", statistic="median")
    for framework in ("torch", "flax"):
        margins.check(f"{framework} conv 1 vs referee", 0.1, 1.0, group="referee",
                      framework=framework, layer="conv 1", error_at_worst=1e-7,
                      one_percent_share=250.0)


def test_report_holds_every_check_and_both_figures(margins, tmp_path):
    record_some(margins)
    written = margins.write_report(tmp_path / "r", "a CPU, 2 threads")
    assert sorted(p.name for p in written) == sorted(margins.REPORT_FILES)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [c["check"] for c in report["checks"]] == [r["check"] for r in margins.RECORDS]
    ceiling, floor = report["checks"][:2]
    assert ceiling["kind"] == "<=" and ceiling["margin"] == pytest.approx(1e-5 - 2e-7)
    assert ceiling["used"] == pytest.approx(2e-7 / 1e-5)  # measured / limit
    assert floor["kind"] == ">=" and floor["margin"] == pytest.approx(0.3 - 1e-3)
    assert floor["used"] == pytest.approx(1e-3 / 0.3)  # limit / measured
    text = (tmp_path / "r" / "report.md").read_text()
    assert text.startswith("# Parity report\n\n5 checks, 0 outside their bound.")
    assert "| loss, max \\|Flax - torch\\| | 2.00e-07 | <= 1.00e-05 | 9.80e-06 | 0.02 |" in text
    assert "| init: KS p-value | 0.3 | >= 0.001 | 0.299 | 0.00 |" in text
    assert "| torch conv 1 vs referee | 0.1 | 250 |" in text  # measured beside a 1 % error's
    assert "| flax conv 1 vs referee | 0.1 | 250 |" in text
    for name in ("trajectory.png", "referee.png"):
        assert (tmp_path / "r" / name).read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(
        [*margins.REPORT_FILES, RECORD_NAME])  # and the record that makes them the project's


def test_a_second_report_replaces_the_first(margins, tmp_path):
    record_some(margins)
    margins.write_report(tmp_path, "first")
    margins.check("one more", 1.0, 2.0)
    margins.write_report(tmp_path, "second")
    assert json.loads((tmp_path / "report.json").read_text())["environment"] == "second"
    assert "6 checks" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("name, content", [("report.md", b"my notes\n"),
                                           ("report.json", b'{"mine": 1}\n'),
                                           ("referee.png", b"\x89PNG not a report's")])
def test_a_users_file_is_never_replaced(margins, tmp_path, name, content):
    record_some(margins)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=f"{name} was not written by a parity report"):
        margins.write_report(tmp_path, "x")
    assert (tmp_path / name).read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_pytest_refuses_the_directory_before_any_test(tmp_path):
    (tmp_path / "report.md").write_text("my notes\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "parity_tests/test_model.py", "--parity-report", str(tmp_path)],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 4, done.stdout + done.stderr  # pytest's usage error
    assert "report.md was not written by a parity report" in done.stderr
    assert " passed" not in done.stdout
    assert (tmp_path / "report.md").read_text() == "my notes\n"


@pytest.mark.parametrize("kind, measured, limit, holds", [
    ("ceiling", 0.5, 1.0, True), ("ceiling", 1.0, 1.0, True), ("ceiling", 1.5, 1.0, False),
    ("ceiling", float("nan"), 1.0, False), ("floor", 2.0, 1.0, True), ("floor", 1.0, 1.0, True),
    ("floor", 0.5, 1.0, False)])
def test_a_check_records_exactly_what_it_asserts(margins, kind, measured, limit, holds):
    if holds:
        margins.check("c", measured, limit, kind=kind)
    else:
        with pytest.raises(AssertionError, match="c: "):
            margins.check("c", measured, limit, kind=kind)
    entry, = margins.RECORDS
    assert entry["measured"] == measured or measured != measured  # the asserted value, even NaN
    assert entry["bound"] == limit and entry["kind"] == {"ceiling": "<=", "floor": ">="}[kind]
    assert (margins.margin(entry) >= 0) == holds
    used = measured / limit if kind == "ceiling" else limit / measured
    assert margins.fraction(entry) == pytest.approx(used, nan_ok=True)


def test_the_report_is_written_by_checks_only():
    """Every parity test records through `check` (which asserts what it records): nothing else
    adds to the records."""
    for path in sorted(PARITY.glob("*.py")):
        text = path.read_text()
        assert "RECORDS.append" not in text or path.name == "margins.py", path.name
        assert "import record" not in text and "margins.record" not in text, path.name


@pytest.mark.parametrize("under", ["", "sub/dir"])
def test_a_report_path_at_or_under_a_file_is_refused_before_any_test(tmp_path, under):
    (tmp_path / "notes").write_text("mine\n")
    target = tmp_path / "notes" / under if under else tmp_path / "notes"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "parity_tests/test_model.py", "--parity-report", str(target)],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 4, done.stdout + done.stderr  # pytest's usage error
    assert "not a directory" in done.stderr and "notes" in done.stderr
    assert " passed" not in done.stdout
    assert (tmp_path / "notes").read_text() == "mine\n"


def test_a_failed_check_keeps_its_row_and_is_counted(margins, tmp_path):
    """A check outside its bound is the report's most important row: it is kept, with its
    negative margin, in report.md, report.json and the terminal table, and counted."""
    record_some(margins)
    with pytest.raises(AssertionError):
        margins.check("bad", 2.0, 1.0)
    margins.write_report(tmp_path, "a CPU")
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# Parity report\n\n6 checks, 1 outside their bound.")
    assert "| bad | 2 | <= 1 | -1 | 2.00 |" in text
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["checks"][-1]["check"] == "bad" and report["checks"][-1]["margin"] == -1
    assert any("bad" in line and "-1" in line for line in margins.text_table())

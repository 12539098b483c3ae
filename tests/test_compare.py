"""`python -m mnist_common.compare`: the table and the overlaid figure of two runs; what is not
a run record, and a figure compare did not write, are refused in one line; Matplotlib adds
nothing to stderr."""

import json

import pytest
from cli_helpers import assert_usage_error, cli_env, run_cli_subprocess, run_in_process

from mnist_common import compare

PROG = "python -m mnist_common.compare"


def fake_run(directory, framework, accuracies, loss=0.05, seconds=12.5, rate=4800.0):
    directory.mkdir()
    epochs = [{"epoch": i + 1, "step": 3 * (i + 1), "partial": False, "test_accuracy": a}
              for i, a in enumerate(accuracies)]
    metrics = {"framework": framework, "device": "cpu (x86_64)", "test_accuracy": accuracies[-1],
               "test_loss": loss, "train_seconds": seconds, "train_images_per_second": rate,
               "step_losses": [2.3, 1.0, 0.5, 0.3, 0.2, 0.1], "epochs": epochs}
    (directory / "metrics.json").write_text(json.dumps(metrics))
    return directory


def test_table_and_figure(tmp_path, capsys):
    runs = [fake_run(tmp_path / "torch", "torch", [0.95, 0.985]),
            fake_run(tmp_path / "flax", "flax", [0.94, 0.986], 0.0432, 30.25, 1999.6)]
    code, out, err = run_in_process(compare.main, [str(r) for r in runs], PROG, capsys)
    assert code == 0, err
    # each row from its own run, every column
    assert "| torch | cpu (x86_64) | 98.50 % | 0.0500 | 12.5 | 4800 |" in out
    assert "| flax | cpu (x86_64) | 98.60 % | 0.0432 | 30.2 | 2000 |" in out
    figure = tmp_path / "compare.png"  # beside the run dirs, by default
    assert f"figure: {figure}" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_run_is_one_line(tmp_path, capsys):
    code, _, err = run_in_process(compare.main, [str(tmp_path / "nope")], PROG, capsys)
    assert_usage_error(code, err, PROG, "metrics.json: no such file (train first)")


def test_unwritable_figure_is_one_line(tmp_path, capsys):
    run = fake_run(tmp_path / "torch", "torch", [0.98])
    code, _, err = run_in_process(compare.main, [str(run), "--plot",
                                                 str(tmp_path / "no" / "dir" / "c.png")],
                                  PROG, capsys)
    assert_usage_error(code, err, PROG, "cannot write it")


def test_the_figure_replaces_only_an_earlier_compare_figure(tmp_path, capsys):
    run = fake_run(tmp_path / "torch", "torch", [0.98])
    figure = tmp_path / "compare.png"
    for _ in range(2):  # written, then replaced: compare's own figure
        code, _, err = run_in_process(compare.main, [str(run)], PROG, capsys)
        assert code == 0, err
    mine = tmp_path / "mine.png"
    from PIL import Image

    assert Image.open(figure).text["Software"] == compare.FIGURE_SOFTWARE
    Image.new("RGB", (4, 4)).save(mine)  # a PNG of the user's
    for target in (mine, run / "metrics.json"):
        before = target.read_bytes()
        code, out, err = run_in_process(compare.main, [str(run), "--plot", str(target)], PROG,
                                        capsys)
        assert_usage_error(code, err, PROG, f"--plot {target}: exists and is not a figure "
                           "compare wrote")
        assert out == "" and target.read_bytes() == before


RECORDS = {
    "a JSON list": [1, 2],
    "missing keys": {"framework": "torch"},
    "a wrong type": {"framework": "torch", "device": "cpu", "test_accuracy": "high",
                     "test_loss": 0.1, "train_seconds": 1, "train_images_per_second": 1,
                     "step_losses": [1.0], "epochs": []},
}


@pytest.mark.parametrize("record", RECORDS, ids=list(RECORDS))
def test_compare_refuses_what_is_not_a_run_record(record, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(RECORDS[record]))
    code, _, err = run_in_process(compare.main, [str(tmp_path / "run")], PROG, capsys)
    assert_usage_error(code, err, PROG, f"{tmp_path / 'run' / 'metrics.json'}: not the "
                       "metrics.json of a training run of this project")
    assert not (tmp_path / "compare.png").exists()


def test_an_unwritable_home_adds_nothing_to_stderr(tmp_path):
    """Matplotlib's config-directory warnings are not a run's business (HOME=/proc/self is
    unwritable even for root)."""
    run = tmp_path / "run"
    run.mkdir()
    metrics = {"framework": "torch", "device": "cpu", "test_accuracy": 0.9, "test_loss": 0.3,
               "train_seconds": 1.0, "train_images_per_second": 10.0, "step_losses": [2.0, 1.0],
               "epochs": [{"epoch": 1, "step": 2, "test_accuracy": 0.9}]}
    (run / "metrics.json").write_text(json.dumps(metrics))
    done = run_cli_subprocess("mnist_common.compare", run, env=cli_env(HOME="/proc/self",
                                                                      MPLCONFIGDIR=None,
                                                                      XDG_CONFIG_HOME=None,
                                                                      XDG_CACHE_HOME=None),
                              timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"

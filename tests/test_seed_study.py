"""`python -m parity_tests.seed_study`: its statistics, its one-line refusals, and a tiny run whose
`--out` replaces only an earlier study's output."""

import json
import math

import pytest
from cli_helpers import assert_usage_error, run_in_process
from training_helpers import use_small_mnist

from parity_tests import seed_study


@pytest.mark.parametrize("df, quantile", [(1, 12.7062), (4, 2.7764), (19, 2.0930), (100, 1.9840)])
def test_t_quantile_matches_the_tables(df, quantile):
    assert seed_study.t_quantile_975(df) == pytest.approx(quantile, abs=2e-4)


def test_report_gives_means_and_the_paired_interval():
    results = {"torch": [0.90, 0.92, 0.94], "flax": [0.89, 0.92, 0.92]}
    lines, record = seed_study.report(results, steps=5, seconds=1.0)
    assert sorted(record) == sorted(seed_study.RECORD_KEYS)
    assert record["paired_mean"] == pytest.approx(0.01)
    assert record["paired_sd"] == pytest.approx(0.01)  # differences 0.01, 0.00, 0.02
    half = 4.3027 * 0.01 / math.sqrt(3)  # t(2) 97.5 % = 4.3027
    assert record["paired_95"] == pytest.approx([0.01 - half, 0.01 + half], abs=1e-5)
    assert lines[1] == "torch  test accuracy 92.00 +- 2.00 %"
    assert "+1.00 +- 1.00 points" in lines[3]


def study(argv, capsys):
    return run_in_process(seed_study.main, argv, seed_study.PROG, capsys)


def test_a_single_seed_is_refused(capsys):
    code, _, err = study(["--seeds", "1"], capsys)
    assert_usage_error(code, err, seed_study.PROG, "--seeds must be at least 2")


@pytest.mark.parametrize("content", ["my notes\n", '{"seeds": 3}\n', "[]\n"])
def test_out_never_replaces_a_users_file(tmp_path, capsys, content):
    out = tmp_path / "mine.json"
    out.write_text(content)
    code, _, err = study(["--seeds", "2", "--steps", "1", "--out", str(out)], capsys)
    assert_usage_error(code, err, seed_study.PROG, "--out", "is not an earlier seed study's")
    assert out.read_text() == content


def test_out_in_a_missing_directory_is_refused_before_the_study(tmp_path, capsys):
    out = tmp_path / "missing" / "study.json"
    code, _, err = study(["--out", str(out)], capsys)
    assert_usage_error(code, err, seed_study.PROG, "does not exist")


@pytest.mark.slow
def test_a_tiny_study_writes_and_then_replaces_its_own_output(real_splits, monkeypatch, tmp_path,
                                                              capsys):
    # The first 512 training and 500 test images of the real MNIST: two full batches, and an
    # evaluation a twentieth of the whole test set's (each study evaluates four times).
    use_small_mnist(monkeypatch, real_splits, train=512, test=500)
    out = tmp_path / "study.json"
    for _ in range(2):  # the second run replaces the first run's file
        code, printed, err = study(["--seeds", "2", "--steps", "2", "--no-progress",
                                    "--out", str(out)], capsys)
        assert code == 0, err
        record = json.loads(out.read_text())
        assert sorted(record) == sorted(seed_study.RECORD_KEYS)
        assert [len(record["accuracy"][name]) for name in ("torch", "flax")] == [2, 2]
        assert all(0.0 < a < 1.0 for name in ("torch", "flax") for a in record["accuracy"][name])
        assert printed.splitlines()[0].startswith("2 seeds, 2 steps of batch 256")

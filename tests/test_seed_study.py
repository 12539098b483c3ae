"""`python -m parity_tests.seed_study`: its statistics against hand computations, its one-line
refusals, and a tiny run that starts each seed from its framework's own draw and whose `--out`
replaces only an earlier study's output."""

import json
import math

import numpy as np
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


def test_report_pairs_each_seed_with_itself():
    # Four seeds, by hand. Differences torch - Flax, seed by seed: 0.07, -0.01, 0.02, -0.03;
    # mean 0.0125; deviations 0.0575, -0.0225, 0.0075, -0.0425; sample variance (n - 1 = 3).
    # Paired by rank instead (sorted), the differences would be 0.03, -0.01, 0.01, 0.02.
    results = {"torch": [0.97, 0.95, 0.99, 0.93], "flax": [0.90, 0.96, 0.97, 0.96]}
    paired_sd = math.sqrt((0.0575**2 + 0.0225**2 + 0.0075**2 + 0.0425**2) / 3)  # 0.043493
    half = 3.1824 * paired_sd / math.sqrt(4)  # t(3) 97.5 % = 3.1824 (tables)
    lines, record = seed_study.report(results, steps=5, seconds=1.0)
    assert record["seeds"] == 4
    assert record["paired_mean"] == pytest.approx(0.0125, abs=1e-12)
    assert record["paired_sd"] == pytest.approx(paired_sd, rel=1e-9)
    assert record["paired_95"] == pytest.approx([0.0125 - half, 0.0125 + half], abs=1e-5)
    # torch: mean 0.96, deviations 0.01, -0.01, 0.03, -0.03: sd sqrt(0.002 / 3) = 0.025820.
    # Flax: mean 0.9475, deviations -0.0475, 0.0125, 0.0225, 0.0125: sd sqrt(0.003075 / 3).
    assert lines[1] == "torch  test accuracy 96.00 +- 2.58 %"
    assert lines[2] == "flax   test accuracy 94.75 +- 3.20 %"
    assert "+1.25 +- 4.35 points, 95 % interval -5.67 to +8.17" in lines[3]


def record_starts(monkeypatch):
    """{framework: [the weights each `train_steps` call of its engine started from]}."""
    from flax_impl import backend as flax_backend
    from torch_impl import backend as torch_backend

    started = {}
    for backend in (torch_backend, flax_backend):
        def recording(state, batches, backend=backend, real=backend.train_steps):
            started[backend.FRAMEWORK].append(backend.state_to_arrays(state)[0])
            return real(state, batches)
        started[backend.FRAMEWORK] = []
        monkeypatch.setattr(backend, "train_steps", recording)
    return started


def assert_own_draws(started, seeds):
    """Seed s's run started from a direct `create_train_state` of its framework for seed s;
    two seeds differ in every tensor."""
    from flax_impl import backend as flax_backend
    from mnist_common.config import Config
    from torch_impl import backend as torch_backend

    for backend in (torch_backend, flax_backend):
        placement = backend.select_placement("cpu")
        own = started[backend.FRAMEWORK]
        assert len(own) == len(seeds)
        for seed, weights in zip(seeds, own, strict=True):
            drawn = backend.state_to_arrays(backend.create_train_state(Config(seed=seed),
                                                                       placement))[0]
            for key, expected in drawn.items():
                assert np.array_equal(weights[key], expected), (backend.FRAMEWORK, seed, key)
        assert all(not np.array_equal(own[0][key], own[1][key]) for key in own[0])


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
def test_a_tiny_study_starts_from_own_draws_and_replaces_its_output(real_splits, monkeypatch,
                                                                   tmp_path, capsys):
    # The first 512 training and 500 test images of the real MNIST: two full batches, and an
    # evaluation a twentieth of the whole test set's (each study evaluates four times).
    use_small_mnist(monkeypatch, real_splits, train=512, test=500)
    started = record_starts(monkeypatch)
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
    # Each seed of both runs started from its framework's own draw for that seed.
    assert_own_draws(started, seeds=[0, 1, 0, 1])

"""--resume in-process on a 100-image training set: a chain of stops and resumes is bit-identical
to the uninterrupted run (torch: `torch_reference`, conftest.py).

With --batch-size 16 an epoch is 7 steps (the last one 4 images), so a few dozen steps cross
epoch ends, a partial last batch, --max-steps stops mid-epoch and at an epoch's end. (Refused
resumes: test_resume_refused.py; after a signal: test_signals.py; after a NaN loss:
test_divergence.py; across processes: test_run_outputs.py.)
"""

import pytest
from cli_helpers import assert_same_run, read_run
from training_helpers import checkpoint_step, train_config

pytestmark = pytest.mark.data


def without_timing(records):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]


def test_torch_resume_chain_is_bit_identical(small_mnist, torch_reference, tmp_path, capsys):
    out_dir = tmp_path / "run"
    train_config("torch", out_dir, epochs=3, max_steps=3)  # stops mid-epoch 1
    assert checkpoint_step(out_dir) == 3
    train_config("torch", out_dir, epochs=3, max_steps=7, resume=True)  # to epoch 1's end
    assert checkpoint_step(out_dir) == 7
    assert "resuming from" in capsys.readouterr().err
    metrics = train_config("torch", out_dir, epochs=1, resume=True)  # already there: outputs only
    assert "nothing to train" in capsys.readouterr().err
    assert metrics["steps"] == 7 and len(metrics["epochs"]) == 1
    train_config("torch", out_dir, epochs=2, max_steps=9, resume=True)  # into epoch 2
    assert checkpoint_step(out_dir) == 9
    metrics = train_config("torch", out_dir, epochs=3, resume=True)  # no --max-steps: to the end
    assert checkpoint_step(out_dir) == 21
    assert_same_run(out_dir, torch_reference)
    expected, _ = read_run(torch_reference)
    assert without_timing(metrics["epochs"]) == without_timing(expected["epochs"])
    assert [r["step"] for r in metrics["epochs"]] == [7, 14, 21]

    # --resume of a finished run: a no-op that rewrites the same outputs.
    (out_dir / "metrics.json").unlink()
    train_config("torch", out_dir, epochs=3, resume=True)
    assert "nothing to train" in capsys.readouterr().err
    assert_same_run(out_dir, torch_reference)


def test_flax_resume_chain_is_bit_identical(small_mnist, tmp_path, capsys):
    reference, out_dir = tmp_path / "reference", tmp_path / "run"
    train_config("flax", reference, epochs=2)
    train_config("flax", out_dir, epochs=2, max_steps=3)
    train_config("flax", out_dir, epochs=2, max_steps=7, resume=True)
    assert checkpoint_step(out_dir) == 7
    train_config("flax", out_dir, epochs=2, resume=True)
    assert checkpoint_step(out_dir) == 14
    assert_same_run(out_dir, reference)


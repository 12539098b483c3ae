"""What the figures draw: each training loss at its step (the first step is 1), each epoch's
test loss at the step the epoch ended and its accuracy at its epoch number, in `loss.png`
(`reporting.plot_losses`) and `compare.png` (`compare.plot_runs`). The lines are read from
Matplotlib's own `Axes.plot` calls, as the figure receives them."""

import numpy as np
import pytest
from matplotlib.axes import Axes

from mnist_common import compare, reporting

METRICS = {"framework": "torch", "device": "cpu", "test_accuracy": 0.75,
           "step_losses": [3.0, 2.0, 1.5, 1.0, 0.75],
           "epochs": [{"epoch": 1, "step": 3, "partial": False, "test_loss": 1.8,
                       "test_accuracy": 0.5},
                      {"epoch": 2, "step": 5, "partial": False, "test_loss": 0.9,
                       "test_accuracy": 0.75}]}


@pytest.fixture
def plotted(monkeypatch):
    """[(x, y)] of every line drawn, in order."""
    lines, plot = [], Axes.plot

    def record(self, x, y, *args, **kwargs):
        lines.append((np.asarray(x, float).tolist(), np.asarray(y, float).tolist()))
        return plot(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", record)
    return lines


def test_loss_png_draws_each_loss_at_its_step(tmp_path, plotted):
    reporting.plot_losses(tmp_path / "loss.png", METRICS)
    assert plotted == [([1, 2, 3, 4, 5], [3.0, 2.0, 1.5, 1.0, 0.75]),
                       ([3, 5], [1.8, 0.9])]
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_png_draws_each_run_at_its_steps_and_epochs(tmp_path, plotted):
    other = {**METRICS, "framework": "flax", "step_losses": [2.5, 1.0, 0.5],
             "epochs": [{"epoch": 1, "step": 3, "partial": False, "test_accuracy": 0.6}]}
    compare.plot_runs([METRICS, other], tmp_path / "compare.png")
    assert plotted == [([1, 2, 3, 4, 5], [3.0, 2.0, 1.5, 1.0, 0.75]), ([1, 2], [50.0, 75.0]),
                       ([1, 2, 3], [2.5, 1.0, 0.5]), ([1], [60.0])]

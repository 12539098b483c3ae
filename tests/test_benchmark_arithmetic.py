"""The benchmark's arithmetic from inputs whose answers are known: the harness's seconds per
call under a fake clock, and the report's ratios from hand-made records."""

import json
from types import SimpleNamespace

import pytest
from cli_helpers import benchmark_module as _import


def test_time_interleaved_seconds_per_call_from_a_fake_clock(monkeypatch):
    """Under a clock that only a candidate's call advances (a fixed step per call), every
    window's seconds per call is exactly that step: window seconds / calls in the window."""
    harness = _import("harness")
    clock = [100.0]
    monkeypatch.setattr(harness, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def candidate(name, step):
        def call():
            clock[0] += step
            return name
        return harness.Candidate(name, call, lambda out: None)

    # Binary-exact steps: 1.0 s windows hold 4 calls of 0.25 s and 2 of 0.5 s.
    settings = SimpleNamespace(warmup_steps=2, min_steps=2, window_seconds=1.0, repeats=3)
    results = harness.time_interleaved([candidate("quick", 0.25), candidate("slow", 0.5)],
                                       settings)
    for name, step, calls in (("quick", 0.25, 4), ("slow", 0.5, 2)):
        result = results[name]
        assert result["first_call_seconds"] == step
        assert result["calls_per_window"] == [calls] * settings.repeats
        assert result["seconds_per_call"]["samples"] == [step] * settings.repeats
        assert (result["seconds_per_call"]["median"] == result["seconds_per_call"]["min"]
                == result["seconds_per_call"]["max"] == step)


def _rate(median):
    return {"median": median, "min": median, "max": median, "samples": [median]}


def _hand_made_results():
    """A minimal results record: `fast` has twice the baseline's images/s at every batch size,
    and the conv layer's flax forward+backward takes twice torch's milliseconds."""
    baseline = _import("report").BASELINE
    section = {"64": {baseline: {"images_per_second": _rate(1000.0)},
                      "fast": {"images_per_second": _rate(2000.0)}}}
    ms = {"torch": _rate(1.5), "flax": _rate(3.0)}
    return baseline, {
        "schema": "mnist-cnn-benchmark/1", "device": "cpu", "device_name": "a test CPU",
        "created": "2024-01-01T00:00:00", "command": "run.py", "complete": True,
        "wall_seconds": 1.0, "method": {"repeats": 1},
        "environment": {"cpu_model": "test", "cpu_count": 2, "torch_num_threads": 2,
                        "versions": {}},
        "variants": {baseline: {"status": "ok"}, "fast": {"status": "ok"}},
        "flops": {"convention": "test", "train_per_image": 1e6},
        "train": section, "inference": json.loads(json.dumps(section)),
        "layers": {"batch_size": 64, "note": "test", "rows": [
            {"layer": "conv1", "kind": "Conv2d", "input_shape": [1, 28, 28],
             "forward_ms": ms, "forward_backward_ms": ms}]}}


def _markdown_table(text, heading):
    """The first Markdown table after the line starting with `heading`: a dict per row."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    first = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("|"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in lines[first:end]]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]


@pytest.mark.parametrize("heading", ["## Training step", "## Inference"])
def test_report_ratio_is_variant_over_baseline(heading):
    """A variant with twice the baseline's images/s shows 2.00× (the baseline 1.00×)."""
    baseline, results = _hand_made_results()
    rows = {row["variant"]: row for row in _markdown_table(
        _import("report").markdown(results), heading)}
    column = f"× {baseline}"
    assert rows["fast"]["batch 64 images/s"] == "2,000 (2,000–2,000)"
    assert rows["fast"][column] == "2.00×"
    assert rows[baseline][column] == "1.00×"


def test_report_layers_ratio_is_flax_over_torch():
    """A layer whose flax forward+backward takes twice torch's ms shows 2.00 as flax/torch."""
    _, results = _hand_made_results()
    [row] = _markdown_table(_import("report").markdown(results), "## Layers alone")
    assert row["flax fwd+bwd ms"] == "3 (3–3)" and row["torch fwd+bwd ms"] == "1.5 (1.5–1.5)"
    assert row["flax/torch fwd+bwd"] == "2.00"

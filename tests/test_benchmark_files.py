"""The benchmark and the files around it: it replaces only what a benchmark run wrote, a stop
never replaces a complete result, a refusal or a missing GPU leaves nothing behind, and
`--render` names its outputs after the JSON (issue 19, cases 4, 9, 12, 13 and 14)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import benchmark_module as _import
from cli_helpers import finish, start_python

from mnist_common.ownership import RECORD_NAME, may_replace

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"
COMMITTED = REPO / "benchmarks" / "results"  # a complete result of this benchmark, cpu.*
SIGNAL_TIMEOUT_S = 300


def _run(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def _snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir())}


def _one_error_line(done, *words):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("benchmarks/run.py: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def complete(tmp_path):
    """An out-dir holding the committed complete CPU result (cpu.json, .md, .png) and the
    ownership record that makes them the project's."""
    out = tmp_path / "results"
    out.mkdir()
    for name in ("cpu.json", "cpu.md", "cpu.png", RECORD_NAME):
        shutil.copy(COMMITTED / name, out)
    return out


# The benchmark with Ctrl-C as at a terminal, even where this test runs in a background shell
# job, whose children start with SIGINT ignored (Python then never raises KeyboardInterrupt).
_WITH_SIGINT = ("import runpy, signal, sys; "
                "signal.signal(signal.SIGINT, signal.default_int_handler); "
                "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def _start(out, *args):
    return subprocess.Popen([sys.executable, "-c", _WITH_SIGINT, str(RUN), "--quick", "--device",
                             "cpu", "--no-epoch", "--no-layers", "--variants",
                             "torch-eager,flax-jit", "--inference-batch-sizes", "1", "--out-dir",
                             str(out), *args],
                            cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _signal_after(process, marker, signum):
    """Send `signum` once a stderr line holds `marker`; (exit status, stderr lines)."""
    lines, deadline = [], time.monotonic() + SIGNAL_TIMEOUT_S
    for line in process.stderr:
        lines.append(line.rstrip("\n"))
        if marker in line:
            process.send_signal(signum)
            break
        assert time.monotonic() < deadline, "\n".join(lines[-20:])
    lines += process.communicate(timeout=SIGNAL_TIMEOUT_S)[1].splitlines()
    return process.returncode, lines


def test_ctrl_c_keeps_the_complete_result_and_what_it_measured(complete):
    """Case 4: Ctrl-C after batch 64 was printed: the complete result is untouched, batch 64's
    figures are in cpu.partial.json, which the last line names; exit status 130."""
    before = _snapshot(complete)
    with _start(complete, "--batch-sizes", "64,256") as process:
        status, lines = _signal_after(process, "images/s", signal.SIGINT)  # batch 64's line
    assert status == 130, "\n".join(lines[-20:])
    partial = complete / "cpu.partial.json"
    assert lines[-1].startswith(f"benchmarks/run.py: stopped by SIGINT; what it measured is in "
                                f"{partial} ")
    kept = {k: v for k, v in _snapshot(complete).items() if k not in (partial.name, RECORD_NAME)}
    assert kept == {k: v for k, v in before.items() if k != RECORD_NAME}  # the record: + partial
    results = json.loads(partial.read_text())
    assert results["complete"] is False
    for variant in ("torch-eager", "flax-jit"):
        assert results["train"]["64"][variant]["images_per_second"]["median"] > 0


def test_sigterm_exits_143_and_leaves_the_out_dir_as_it_was(complete):
    """Case 14: SIGTERM (as from `timeout`) exits 143, like the training CLIs; stopped before
    a figure was measured, nothing in the out-dir changed."""
    before = _snapshot(complete)
    with _start(complete) as process:
        status, lines = _signal_after(process, "FLOP count", signal.SIGTERM)
    assert status == 143, "\n".join(lines[-20:])
    assert lines[-1] == "benchmarks/run.py: stopped by SIGTERM; nothing written"
    assert _snapshot(complete) == before


def test_partial_results_in_the_checkout_are_ignored_by_git():
    """Case 4: an interrupted default run (benchmarks/results/) leaves the checkout clean."""
    for name in ("cpu.partial.json", "cpu.partial.md", "tf32/gpu-x.partial.json"):
        done = subprocess.run(["git", "check-ignore", "-q", f"benchmarks/results/{name}"],
                              cwd=REPO)
        assert done.returncode in (0, 128), name  # 128: not a git checkout
        assert done.returncode == 0 or not (REPO / ".git").exists(), name


def test_foreign_file_in_the_out_dir_is_refused_before_measuring(tmp_path):
    """A user's cpu.md (no results JSON beside it) is named and kept; nothing is added."""
    (tmp_path / "cpu.md").write_text("my notes\n")
    done = _run("--quick", "--device", "cpu", "--out-dir", str(tmp_path))
    _one_error_line(done, "cpu.md", "not this benchmark's output")
    assert _snapshot(tmp_path) == {"cpu.md": b"my notes\n"}


@pytest.mark.parametrize("name, content", [
    ("cpu.json", b'{"schema": "someone-else/1"}'), ("cpu.json", b"[1, 2]"),
    ("cpu.json", b"\xff\xfe not text"), ("cpu.partial.json", b"{}"), ("cpu.md", b"# notes"),
    ("cpu.png", b"\x89PNG\r\n\x1a\n not ours"), ("cpu.md", b"# MNIST CNN benchmark: mine")])
def test_only_files_a_benchmark_wrote_may_be_replaced(tmp_path, name, content):
    harness, errors = _import("harness"), __import__("mnist_common.errors", fromlist=["x"])
    (tmp_path / name).write_bytes(content)
    with pytest.raises(errors.UsageError, match=name.replace(".", r"\.")):
        harness.prepare_out_dir(tmp_path, harness.output_names("cpu"))
    assert _snapshot(tmp_path) == {name: content}


def test_a_complete_result_may_be_replaced(complete):
    harness = _import("harness")
    assert all(may_replace(complete / n) for n in harness.output_names("cpu"))
    harness.prepare_out_dir(complete, harness.output_names("cpu"))  # no refusal
    for suffix in ("json", "md", "png"):  # each edited by the user: theirs from then on
        (complete / f"cpu.{suffix}").write_bytes(b'{"schema": "someone-else/1"}')
        assert not may_replace(complete / f"cpu.{suffix}")


def test_missing_gpu_leaves_no_out_dir_and_no_scratch_dir(tmp_path):
    """Case 12: --device gpu with no GPU: one line, no out-dir created (nor with --quick a
    scratch directory)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu",
           "TMPDIR": str(tmp_path / "tmp"), "PYTHONPATH": str(REPO)}
    (tmp_path / "tmp").mkdir()
    started = [start_python(RUN, "--device", "gpu", "--out-dir", tmp_path / "new" / "out", env=env),
               start_python(RUN, "--quick", "--device", "gpu", env=env)]  # side by side
    for process in started:
        _one_error_line(finish(process), "--device gpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("mnist-bench")]


@pytest.mark.parametrize("content", [b'{"schema": "mnist-cnn-benchmark/1"}',
                                     b'{"schema": "mnist-cnn-scaling/1"}', b"[]", b"not json"])
def test_render_of_a_file_that_is_not_a_result_is_one_line(tmp_path, content):
    """Case 9: --render on a JSON that is not a results file: one line, exit 2, no file."""
    (tmp_path / "X.json").write_bytes(content)
    if content.startswith(b'{"schema": "mnist-cnn-benchmark'):  # the repro, as a user
        _one_error_line(_run("--render", str(tmp_path / "X.json")), "X.json", "not a complete")
    else:
        errors = __import__("mnist_common.errors", fromlist=["x"])
        with pytest.raises(errors.UsageError, match="not a complete results file"):
            _import("session").render(tmp_path / "X.json")
    assert _snapshot(tmp_path) == {"X.json": content}


def test_render_of_a_missing_file_says_so(tmp_path):
    errors = __import__("mnist_common.errors", fromlist=["x"])
    with pytest.raises(errors.UsageError, match=r"X\.json: no such file$"):
        _import("session").render(tmp_path / "X.json")
    assert list(tmp_path.iterdir()) == []


def test_render_names_outputs_after_the_json_and_keeps_a_users_files(tmp_path, capsys):
    """Case 13: --render X.json writes X.md and X.png, never the device's cpu.md beside it."""
    shutil.copy(COMMITTED / "cpu.json", tmp_path / "X.json")
    (tmp_path / "cpu.md").write_text("my notes\n")
    _import("session").render(tmp_path / "X.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD_NAME, "X.json", "X.md", "X.png",
                                                          "cpu.md"]
    assert (tmp_path / "cpu.md").read_text() == "my notes\n"
    assert capsys.readouterr().out.strip() == (tmp_path / "X.md").read_text().strip()
    (tmp_path / "X.md").write_text("my own X.md\n")  # no longer the benchmark's report
    errors = __import__("mnist_common.errors", fromlist=["x"])
    with pytest.raises(errors.UsageError, match=r"X\.md is not this benchmark's output"):
        _import("session").render(tmp_path / "X.json")
    assert (tmp_path / "X.md").read_text() == "my own X.md\n"


def test_each_figure_is_saved_as_it_comes_and_kept_beside_a_failure(capsys):
    """A section's figures reach the partial file one by one; a later failure keeps them."""
    session_module = _import("session")
    session = session_module.Session.__new__(session_module.Session)
    saved = []
    session.results, session.started, session.save = {}, 0.0, saved.append

    def measure():
        yield 64, {"torch-eager": {"seconds": 1.0}}
        raise RuntimeError("out of memory")

    session.section("train", measure)
    assert saved[0]["train"] == {"64": {"torch-eager": {"seconds": 1.0}}}
    assert saved[-1]["train"] == {"64": {"torch-eager": {"seconds": 1.0}},
                                  "error": "RuntimeError: out of memory"}
    assert "train failed: RuntimeError: out of memory" in capsys.readouterr().err

"""Running the CLIs in tests: in a subprocess, or in-process as `python -m` would; their error
lines; the outputs of a finished run.

The one subprocess runner is `start_python` (`run_python` waits for it): the real commands run
from the repository root, with it on PYTHONPATH. In-process runs call a CLI's `main` through
`run_cli`, which is all a CLI adds, where a subprocess would only add interpreter start-up.
Messages name a CLI by `mnist_common.config.cli_name`. (Not in conftest.py: parity_tests/ has a
conftest module of its own, so `from conftest import ...` would be ambiguous.)
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from flax_impl import evaluate as flax_evaluate
from flax_impl import train as flax_train
from mnist_common.errors import run_cli
from torch_impl import evaluate as torch_evaluate
from torch_impl import train as torch_train

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TRAIN = {"torch": torch_train.main, "flax": flax_train.main}  # each CLI's `main`
EVALUATE = {"torch": torch_evaluate.main, "flax": flax_evaluate.main}


# --- subprocesses -------------------------------------------------------------------------------


# One persistent XLA cache for the session's subprocesses: each new process would otherwise
# compile the same Flax train step, evaluation and initialisation again (6-8 s of a 5-step run's
# 19-21 s on a 2-core EPYC). A cached executable is the one a fresh compile gives: tested in
# test_run_outputs.py, whose reference run compiles its own (JAX_COMPILATION_CACHE_DIR=None).
_XLA_CACHE = tempfile.TemporaryDirectory(prefix="mnist-cnn-parity-tests-xla-")
XLA_CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": _XLA_CACHE.name,
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
                 # A size limit turns on jax's file lock around every read and write of the
                 # cache, so a process never reads an entry that another one is still writing.
                 "JAX_COMPILATION_CACHE_MAX_SIZE": str(8 << 30)}


def cli_env(**extra):
    """The environment for a CLI subprocess: this one, the session's XLA cache, plus `extra`
    (None removes a name)."""
    env = {**os.environ, **XLA_CACHE_ENV, "PYTHONPATH": str(REPO)}
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def start_python(*argv, env=None, prefix=()):
    """Start `[PREFIX] python ARGV` in the repository root (output captured as text)."""
    return subprocess.Popen(
        [*prefix, sys.executable, *map(str, argv)], cwd=REPO, env=env or cli_env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_cli(module, *args, env=None, prefix=()):
    """Start `python -m module ARGS` in the repository root."""
    return start_python("-m", module, *args, env=env, prefix=prefix)


def finish(process, timeout=300):
    """Wait for a process from `start_python`; a CompletedProcess."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"{process.args} timed out; stderr: {stderr[-2000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_python(*argv, env=None, timeout=300):
    """Run `python ARGV` to completion."""
    return finish(start_python(*argv, env=env), timeout)


def run_cli_subprocess(module, *args, env=None, timeout=300):
    """Run `python -m module ARGS` to completion."""
    return finish(start_cli(module, *args, env=env), timeout)


# Runs `python -m MODULE ARGS` with the engine's train_steps wrapped: once STEP steps are done
# it writes the step count to READY, then waits (up to 2 minutes) until the run's stop handler
# has taken a signal, which it sees by the handler being swapped back (mnist_common.rundir).
_PAUSED_AT_STEP = """
import importlib, runpy, signal, sys, time
ready, step, module = sys.argv[1], int(sys.argv[2]), sys.argv[3]
backend = importlib.import_module(module.split(".")[0] + ".backend")
real, done = backend.train_steps, [0]
def train_steps(state, batches):
    state, losses = real(state, batches)
    before, done[0] = done[0], done[0] + len(losses)
    if before < step <= done[0]:
        handler = signal.getsignal(signal.SIGINT)
        with open(ready + ".tmp", "w") as out:
            out.write(str(done[0]))
        import os
        os.replace(ready + ".tmp", ready)
        deadline = time.monotonic() + 120
        while signal.getsignal(signal.SIGINT) is handler and time.monotonic() < deadline:
            time.sleep(0.01)
    return state, losses
backend.train_steps = train_steps
sys.argv = [module, *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def start_cli_paused_at_step(module, step, ready, *args, env=None):
    """Start a training CLI that pauses after `step` steps until it is sent SIGINT or SIGTERM;
    it writes the step it paused at into the file `ready` first. The test, not the machine's
    speed, decides where the run is interrupted."""
    return start_python("-c", _PAUSED_AT_STEP, ready, step, module, *args, env=env)


def wait_for_file(path, process, timeout=300):
    """Wait until `path` exists (while `process` runs); its text."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if process.poll() is not None:
            pytest.fail(f"{process.args[-1]} ended before {path} appeared: "
                        f"{process.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)
    return Path(path).read_text()


# --- in-process ---------------------------------------------------------------------------------


def run_in_process(main, argv, prog, capsys):
    """Call a CLI's `main` as its `__main__` does; (exit status, stdout, stderr)."""
    try:
        run_cli(main, argv, prog=prog)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


# --- error lines --------------------------------------------------------------------------------


def assert_usage_error(returncode, stderr, prog, *words):
    """Exit status 2 and exactly one stderr line `prog: error: ...` containing `words`."""
    assert returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: error: "), stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def assert_error_after_status(returncode, stderr, prog, *words):
    """Like `assert_usage_error`, for a failure during training: the status lines the run
    printed before it (what it trains on, where it resumes from) may precede the one error line,
    which is the last."""
    assert returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == lines[-1:], stderr
    return assert_usage_error(returncode, lines[-1], prog, *words)


# --- a finished run's outputs -------------------------------------------------------------------


def read_run(out_dir):
    """(metrics dict, weights dict) of a finished training run."""
    from safetensors.numpy import load_file

    out_dir = Path(out_dir)
    return (json.loads((out_dir / "metrics.json").read_text()),
            load_file(str(out_dir / "model.safetensors")))


def assert_same_run(actual_dir, expected_dir):
    """Bit-identical per-step losses and final weights."""
    actual_metrics, actual_weights = read_run(actual_dir)
    expected_metrics, expected_weights = read_run(expected_dir)
    assert actual_metrics["step_losses"] == expected_metrics["step_losses"]
    assert actual_weights.keys() == expected_weights.keys()
    for key in expected_weights:
        assert actual_weights[key].dtype == expected_weights[key].dtype
        assert np.array_equal(actual_weights[key], expected_weights[key]), key
        assert actual_weights[key].tobytes() == expected_weights[key].tobytes(), key
    assert actual_metrics["test_correct"] == expected_metrics["test_correct"]
    assert actual_metrics["test_loss"] == expected_metrics["test_loss"]


def benchmark_module(name):
    """A module of the benchmarks package (the repository root put on sys.path)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return __import__(f"benchmarks.{name}", fromlist=[name])

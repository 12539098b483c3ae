"""Data parallelism: torchrun + DDP (gloo) and a JAX device mesh train like one process.

The same seed, the same global batches: 2 processes / devices share each batch, so after 10 steps
the weights and per-step losses equal the single-process run's up to float32 summation order
(the gradient is summed in two parts and then added, instead of in one pass). The losses stay
within 1e-5. So do the weights, except where Adam amplifies rounding: a weight whose gradients
sit near Adam's eps (1e-8) moves by lr * g / (|g| + eps), so a rounding-level change of g can
move it by up to lr per step. The check is therefore: every loss within 1e-5, at least 99.5 % of
every tensor's elements within 1e-5, and every element within one learning rate.

Why 10 steps: past them the rounding difference grows chaotically, at a rate that depends on the
CPU. torch channels_last on a 2-core AMD EPYC (2026-12-01): the loss gap is 3.6e-7 at step 1 and
at most 3.6e-7 over 10 steps (14 of 123,222 weights beyond 1e-5, the largest 3.3e-5), but 1.2e-6
at step 13 and 9.7e-6 at step 20, when 3.5 % of layer.5.weight was beyond 1e-5 and one weight
3.3e-4 apart; the same comparison at 20 steps had passed on another EPYC and failed on this one
with NCHW too. Ten steps show that two processes train like one, not which CPU rounds luckily.
Checkpoints carry canonical arrays, not a device layout, so a run resumes on another device count.
Three processes or devices pad each batch (256 or 100 images, and evaluation's 1000) with two
masked zero images: the losses, `test_loss` and the counts are still one device's.
"""

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from cli_helpers import REPO, cli_env, finish, read_run

STEPS = 10  # before rounding differences grow chaotically (see the docstring)
TOLERANCE = 1e-5
BULK_FRACTION = 0.995  # of each tensor's elements within TOLERANCE (see the docstring)
LEARNING_RATE = 2e-4  # the bound on every element: Adam moves a weight by <= ~lr per step
pytestmark = pytest.mark.slow


def start(command, env=None):
    return subprocess.Popen(command, cwd=REPO, env=env or cli_env(), text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def succeeded(process, timeout=600):
    result = finish(process, timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run(command, env=None, timeout=600):
    return succeeded(start(command, env), timeout)


def torch_train(out_dir, *args, processes=1):
    """`python -m torch_impl.train`, or under `torchrun --standalone` (gloo on 127.0.0.1)."""
    flags = ["--no-progress", "--device", "cpu", "--out-dir", str(out_dir), *map(str, args)]
    if processes == 1:
        return run([sys.executable, "-m", "torch_impl.train", *flags])
    env = cli_env(GLOO_SOCKET_IFNAME="lo", MASTER_ADDR=None, MASTER_PORT=None,
                  OMP_NUM_THREADS="1")
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes}", "-m", "torch_impl.train", *flags], env=env)


def flax_train(out_dir, *args, devices=1):
    """`python -m flax_impl.train` with `devices` CPU devices (XLA's host-platform split)."""
    flags = os.environ.get("XLA_FLAGS", "")
    env = cli_env(XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip())
    return run([sys.executable, "-m", "flax_impl.train", "--no-progress", "--device", "cpu",
                "--out-dir", str(out_dir), *map(str, args)], env=env)


def assert_close_runs(actual_dir, expected_dir, steps=STEPS):
    actual_metrics, actual_weights = read_run(actual_dir)
    expected_metrics, expected_weights = read_run(expected_dir)
    assert actual_metrics["steps"] == expected_metrics["steps"] == steps
    losses = np.asarray(actual_metrics["step_losses"])
    expected_losses = np.asarray(expected_metrics["step_losses"])
    assert losses.shape == expected_losses.shape == (steps,)
    np.testing.assert_allclose(losses, expected_losses, rtol=0, atol=TOLERANCE)
    assert losses[-1] < losses[0] - 1e-3  # it trained (100x the tolerance)
    for key, expected in expected_weights.items():
        gap = np.abs(actual_weights[key] - expected)
        assert (gap <= TOLERANCE).mean() >= BULK_FRACTION, (key, (gap > TOLERANCE).sum())
        assert gap.max() <= LEARNING_RATE, (key, gap.max())
    # Evaluation is sharded too: the same test images, counted once each.
    assert actual_metrics["test_examples"] == expected_metrics["test_examples"] == 10_000
    assert abs(actual_metrics["test_correct"] - expected_metrics["test_correct"]) <= 2
    # The mean over the same 10,000 images from weights that differ by rounding: within the
    # losses' bound (padding counted in it would add ~2e-3: 2.3 per masked zero image, 20 of them).
    assert abs(actual_metrics["test_loss"] - expected_metrics["test_loss"]) <= TOLERANCE


def one_many_one(train, out_dir, many):
    """A third of the steps on one, a third resumed on `many`, the rest resumed on one again:
    a checkpoint moves from one to many and from many to one in a single run; the out-dir."""
    train(out_dir, "--max-steps", STEPS // 3)
    train(out_dir, "--max-steps", 2 * STEPS // 3, "--resume", **many)
    train(out_dir, "--max-steps", STEPS, "--resume")
    return out_dir


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_taken(stderr):
    """Whether a run failed because its coordinator port was taken meanwhile."""
    text = stderr.lower()  # jax 0.11 says "Failed to start RPC server" (measured)
    return any(words in text for words in ("failed to start rpc server",
                                           "address already in use", "failed to bind"))


def jax_distributed(out_dir):
    """The several-machines path (jax.distributed, gloo collectives on the CPU), on one
    machine: two processes of one device each; (their CompletedProcesses, the out-dir).

    The coordinator binds the port itself, so a free port is picked and may be taken by
    another program before it binds: then the pair is started again on a new port.
    """
    for attempt in range(3):
        run_dir = out_dir / f"attempt-{attempt}"
        address = f"127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "flax_impl.train", "--no-progress", "--device", "cpu",
                   "--max-steps", str(STEPS), "--out-dir", str(run_dir)]
        processes = [start(command, cli_env(JAX_COORDINATOR_ADDRESS=address,
                                            JAX_NUM_PROCESSES="2",
                                            JAX_PROCESS_ID=str(process_id)))
                     for process_id in (0, 1)]  # both running: each waits for the other
        coordinator = finish(processes[0], 600)  # process 0 binds the port
        if attempt < 2 and coordinator.returncode and port_taken(coordinator.stderr):
            processes[1].kill()  # it would wait for a coordinator that never comes
            finish(processes[1])
            continue
        return [coordinator, finish(processes[1], 600)], run_dir


# Every CLI run of this module, by name: (function of the module's tmp dir, the tests using it).
# They are independent, so they all start together, WORKERS at a time: each run spends much of
# its time in one core (imports, compiling), and their numbers do not depend on what else the
# machine runs. The slowest come first. (pytest --durations lists their time under the first
# test that waits.)
JOBS = {
    "torch one-two-one": (lambda d: one_many_one(torch_train, d, {"processes": 2}),
                          "test_torch_checkpoints_move_between_process_counts"),
    "jax one-two-one": (lambda d: one_many_one(flax_train, d, {"devices": 2}),
                        "test_jax_checkpoints_move_between_device_counts"),
    "jax distributed": (jax_distributed, "test_jax_distributed_two_processes_equal_one"),
    "torch two": (lambda d: torch_train(d, "--max-steps", STEPS, processes=2),
                  "test_torchrun_two_processes_equal_one"),
    # 3 processes, batch 256 (and evaluation batches of 1000): each is padded by 2 masked images.
    "torch three": (lambda d: torch_train(d, "--max-steps", STEPS, processes=3),
                    "test_torchrun_batch_not_divisible_by_processes_is_padded_and_masked"),
    "jax two": (lambda d: flax_train(d, "--max-steps", STEPS, devices=2),
                "test_jax_two_devices_equal_one"),
    # 3 devices, batch 100 (and evaluation batches of 1000): each is padded by 2 masked images.
    "jax three, batch 100": (
        lambda d: flax_train(d, "--max-steps", 5, "--batch-size", 100, devices=3),
        "test_jax_batch_not_divisible_by_devices_is_padded_and_masked"),
    "jax one, batch 100": (lambda d: flax_train(d, "--max-steps", 5, "--batch-size", 100),
                           "test_jax_batch_not_divisible_by_devices_is_padded_and_masked"),
    "torch one": (lambda d: torch_train(d, "--max-steps", STEPS),
                  "test_torchrun_two_processes_equal_one",
                  "test_torchrun_batch_not_divisible_by_processes_is_padded_and_masked",
                  "test_torch_checkpoints_move_between_process_counts"),
    "jax one": (lambda d: flax_train(d, "--max-steps", STEPS),
                "test_jax_two_devices_equal_one", "test_jax_distributed_two_processes_equal_one",
                "test_jax_checkpoints_move_between_device_counts"),
}
WORKERS = 3


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory, mnist_root):
    """{name: (Future of the job's result, its out-dir)} for the jobs the selected tests use
    (`pytest -k` starts no others); a test that asks for a result waits for it, and a job's
    failure fails the tests that use it."""
    here = request.node.nodeid
    selected = {item.originalname for item in request.session.items
                if item.nodeid.startswith(here + "::")}
    root = tmp_path_factory.mktemp("dp")
    dirs = {name: root / name.replace(" ", "-").replace(",", "") for name in JOBS}
    with ThreadPoolExecutor(WORKERS) as pool:
        yield {name: (pool.submit(job, dirs[name]), dirs[name])
               for name, (job, *tests) in JOBS.items() if selected & set(tests)}


def finished(runs, *names):
    """Wait for the named jobs (raising a job's failure here); their out-dirs."""
    for name in names:
        runs[name][0].result()
    return [runs[name][1] for name in names]


def test_torchrun_two_processes_equal_one(runs):
    result = runs["torch two"][0].result()
    assert "x 2 processes (gloo, DistributedDataParallel)" in result.stderr
    assert result.stdout.count("test accuracy") == 1  # only rank 0 reports
    two, one = finished(runs, "torch two", "torch one")
    assert_close_runs(two, one)
    metrics, _ = read_run(two)
    assert "2 processes" in metrics["device"]


def test_torchrun_batch_not_divisible_by_processes_is_padded_and_masked(runs):
    result = runs["torch three"][0].result()
    assert "x 3 processes (gloo, DistributedDataParallel)" in result.stderr
    assert_close_runs(*finished(runs, "torch three", "torch one"))


def test_torch_checkpoints_move_between_process_counts(runs):
    """Resumed from 1 process on 2, then from 2 on 1: the run equals the uninterrupted one."""
    assert_close_runs(*finished(runs, "torch one-two-one", "torch one"))


def test_jax_two_devices_equal_one(runs):
    result = runs["jax two"][0].result()
    assert "x 2 devices" in result.stderr
    assert_close_runs(*finished(runs, "jax two", "jax one"))


def test_jax_distributed_two_processes_equal_one(runs):
    results, out_dir = runs["jax distributed"][0].result()
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 devices on 2 processes" in results[0].stderr
    assert "test accuracy" in results[0].stdout
    assert "test accuracy" not in results[1].stdout  # only process 0 reports and writes
    assert_close_runs(out_dir, *finished(runs, "jax one"))


def test_jax_checkpoints_move_between_device_counts(runs):
    """Resumed from 1 device on 2, then from 2 on 1: the run equals the uninterrupted one."""
    assert_close_runs(*finished(runs, "jax one-two-one", "jax one"))


def test_jax_batch_not_divisible_by_devices_is_padded_and_masked(runs):
    assert_close_runs(*finished(runs, "jax three, batch 100", "jax one, batch 100"), steps=5)

"""A multi-process start the environment asks for: every variable is checked before anything
waits (one line, exit status 2), and a process whose peers never come says at once what it
waits for, then gives up after MNIST_PEER_TIMEOUT seconds with one line and exit status 2.

The checks run in-process, with the frameworks' rendezvous replaced by one that fails the test:
a value that got past its check would otherwise wait. The waits run as the real commands, in
subprocesses, with a 2-second limit.
"""

import socket
import time

import jax
import pytest
import torch.distributed
from cli_helpers import (
    EVALUATE,
    TRAIN,
    assert_usage_error,
    cli_env,
    finish,
    run_in_process,
    start_cli,
)

from mnist_common.config import FRAMEWORKS, cli_name

TORCH_START = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29562"}
FLAX_START = {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0",
              "JAX_COORDINATOR_ADDRESS": "127.0.0.1:29571"}
START = {"torch": TORCH_START, "flax": FLAX_START}

# (framework, the variables changed from START, words the one line must hold)
BAD_STARTS = {
    "rank beyond the world": ("torch", {"RANK": "5"}, ["RANK=5", "[0, 1]", "WORLD_SIZE=2"]),
    "rank equal to the world": ("torch", {"RANK": "2"}, ["RANK=2", "[0, 1]", "WORLD_SIZE=2"]),
    "local rank equal to the world": ("torch", {"LOCAL_RANK": "2"}, ["LOCAL_RANK=2", "[0, 1]"]),
    "negative rank": ("torch", {"RANK": "-1"}, ["RANK=-1", "[0, 1]"]),
    "rank not a number": ("torch", {"RANK": "zero"}, ["RANK=zero", "not a whole number"]),
    "world size 0": ("torch", {"WORLD_SIZE": "0"}, ["WORLD_SIZE=0", "1 or more"]),
    "world size not a number": ("torch", {"WORLD_SIZE": "two"}, ["WORLD_SIZE=two"]),
    "local rank beyond the world": ("torch", {"LOCAL_RANK": "7"}, ["LOCAL_RANK=7", "[0, 1]"]),
    "port not a number": ("torch", {"MASTER_PORT": "abc"}, ["MASTER_PORT=abc",
                                                            "not a whole number"]),
    "port 0": ("torch", {"MASTER_PORT": "0"}, ["MASTER_PORT=0", "[1, 65535]"]),
    "port too large": ("torch", {"MASTER_PORT": "70000"}, ["MASTER_PORT=70000", "[1, 65535]"]),
    "empty address": ("torch", {"MASTER_ADDR": ""}, ["MASTER_ADDR=", "not a host name"]),
    "address with a space": ("torch", {"MASTER_ADDR": "10.0.0.1 x"}, ["MASTER_ADDR=10.0.0.1 x"]),
    "torch timeout not a number": ("torch", {"MNIST_PEER_TIMEOUT": "soon"},
                                   ["MNIST_PEER_TIMEOUT=soon", "seconds"]),
    "process id beyond the run": ("flax", {"JAX_PROCESS_ID": "5"},
                                  ["JAX_PROCESS_ID=5", "[0, 1]", "JAX_NUM_PROCESSES=2"]),
    "process id equal to the run": ("flax", {"JAX_PROCESS_ID": "2"},
                                    ["JAX_PROCESS_ID=2", "[0, 1]", "JAX_NUM_PROCESSES=2"]),
    "process id not a number": ("flax", {"JAX_PROCESS_ID": "first"}, ["JAX_PROCESS_ID=first"]),
    "no processes": ("flax", {"JAX_NUM_PROCESSES": "0"}, ["JAX_NUM_PROCESSES=0", "1 or more"]),
    "address without a port": ("flax", {"JAX_COORDINATOR_ADDRESS": "127.0.0.1"},
                               ["JAX_COORDINATOR_ADDRESS=127.0.0.1", "host:port"]),
    "address without a host": ("flax", {"JAX_COORDINATOR_ADDRESS": ":1234"},
                               ["JAX_COORDINATOR_ADDRESS=:1234", "host:port"]),
    "address port not a number": ("flax", {"JAX_COORDINATOR_ADDRESS": "host:abc"},
                                  ["JAX_COORDINATOR_ADDRESS=host:abc", "[1, 65535]"]),
    "address port too large": ("flax", {"JAX_COORDINATOR_ADDRESS": "host:65536"},
                               ["host:65536", "[1, 65535]"]),
    "IPv6 address without brackets": ("flax", {"JAX_COORDINATOR_ADDRESS": "::1:1234"},
                                      ["::1:1234", "[::1]:1234"]),
    "flax timeout 0": ("flax", {"MNIST_PEER_TIMEOUT": "0"}, ["MNIST_PEER_TIMEOUT=0", "seconds"]),
}


@pytest.mark.parametrize("case", BAD_STARTS)
def test_a_bad_start_variable_is_one_line_before_any_wait(case, monkeypatch, tmp_path, capsys):
    framework, changes, words = BAD_STARTS[case]

    def rendezvous(*args, **kwargs):
        pytest.fail(f"{case}: the process went on to wait for its peers")

    monkeypatch.setattr(torch.distributed, "init_process_group", rendezvous)
    monkeypatch.setattr(jax.distributed, "initialize", rendezvous)
    for name, value in {**START[framework], **changes}.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_in_process(TRAIN[framework], ["--device", "cpu", "--out-dir",
                                                       str(tmp_path / "out")],
                                    cli_name(framework), capsys)
    assert_usage_error(code, err, cli_name(framework), *words)
    assert out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_evaluate_checks_the_start_variables_too(framework, weights_file, monkeypatch, capsys):
    monkeypatch.setattr(torch.distributed, "init_process_group", pytest.fail)
    monkeypatch.setattr(jax.distributed, "initialize", pytest.fail)
    rank = {"torch": "RANK", "flax": "JAX_PROCESS_ID"}[framework]
    for name, value in {**START[framework], rank: "5"}.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_in_process(EVALUATE[framework], ["--weights", str(weights_file)],
                                    cli_name(framework, "evaluate"), capsys)
    assert_usage_error(code, err, cli_name(framework, "evaluate"), f"{rank}=5", "[0, 1]")
    assert out == ""


def free_port():
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_process_without_peers_says_what_it_waits_for_and_gives_up(tmp_path):
    port = {framework: free_port() for framework in FRAMEWORKS}
    env = {"torch": {**TORCH_START, "MASTER_PORT": str(port["torch"])},
           "flax": {**FLAX_START, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port['flax']}"}}
    began = time.monotonic()
    processes = {framework: start_cli(f"{framework}_impl.train", "--device", "cpu",
                                      "--no-progress", "--out-dir", tmp_path / framework,
                                      env=cli_env(MNIST_PEER_TIMEOUT="2", **env[framework]))
                 for framework in FRAMEWORKS}
    try:
        for framework, process in processes.items():
            done = finish(process, timeout=120)  # without the limit: 30 min (torch), 5 (JAX)
            address = f"127.0.0.1:{port[framework]}"
            waiting, *rest = [line for line in done.stderr.splitlines() if line.strip()]
            assert waiting == (f"process 0 of 2: waiting up to 2 s for the others at {address} "
                               f"(MNIST_PEER_TIMEOUT=SECONDS waits longer)"), done.stderr
            assert_usage_error(done.returncode, "\n".join(rest), cli_name(framework),
                               f"the 2 processes did not all meet at {address} within 2 s",
                               "MNIST_PEER_TIMEOUT=SECONDS")
            assert done.stdout == "" and not (tmp_path / framework).exists()
    finally:  # a failure above leaves no process waiting
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    assert time.monotonic() - began < 100

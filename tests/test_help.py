"""`--help` of every CLI: exit status 0, and the defaults a user needs, each stated once."""

import importlib

import pytest
from cli_helpers import run_in_process
from data_helpers import data_cli

CLIS = ["torch_impl.train", "flax_impl.train", "torch_impl.evaluate", "flax_impl.evaluate"]


@pytest.mark.parametrize("module", CLIS)
def test_help_exits_0_and_shows_defaults(module, capsys):
    main = importlib.import_module(module).main
    code, out, err = run_in_process(main, ["--help"], f"python -m {module}", capsys)
    assert code == 0, err
    assert out.startswith(f"usage: python -m {module}")
    text = " ".join(out.split())  # argparse wraps lines
    if module.endswith(".train"):
        for default in ("(default: 10)", "(default: 256)", "(default: 0.0002)", "(default: 0)",
                        "(default: auto)", "(default: memory)", "--max-steps N", "--resume"):
            assert default in text, default
    else:
        assert "--weights FILE" in text and "(default: auto)" in text


def test_cli_help():
    done = data_cli("--help")
    assert done.returncode == 0
    assert "--data-dir" in done.stdout and "--no-progress" in done.stdout


def test_cli_help_states_each_default_once():
    done = data_cli("--help")
    assert done.returncode == 0
    assert done.stdout.count("default") == 1
    assert "$MNIST_DATA_DIR if set, else" in " ".join(done.stdout.split())

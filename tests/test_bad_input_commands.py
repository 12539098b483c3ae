"""Bad input as a user sees it: the real commands, started side by side, each answer one line
on stderr (`prog: error: ...`), exit status 2, no traceback, and nothing lost. (The same cases
and many more run in-process in test_bad_flags.py, test_bad_data.py and test_weight_files.py.)
"""

import os
import shutil
import subprocess

import pytest
from cli_helpers import assert_usage_error, finish, start_cli
from data_helpers import data_dir_with
from weight_helpers import evil_pt


def _unprivileged():
    """A command prefix under which write permission bits are enforced, or None."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    drop = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"] if setpriv else None
    if drop is None or subprocess.run([*drop, "true"], capture_output=True).returncode != 0:
        return None
    return drop


@pytest.fixture(scope="module")
def subprocess_cases(tmp_path_factory, mnist_root):
    """Every real-command case, started side by side; {name: (CompletedProcess, context)}."""
    base = tmp_path_factory.mktemp("bad-input")
    cases = {}  # everything is set up first, then all commands start at once

    def case(name, module, *args, env=None, context=None, prefix=None):
        cases[name] = (prefix, module, args, env, context)

    case("flag", "torch_impl.train", "--epochs", "0")

    magic = base / "magic"
    data_dir, damaged = data_dir_with(magic, mnist_root, "t10k-labels-idx1-ubyte",
                                      lambda c: b"\x00\x00\x08\x03" + c[4:])
    case("wrong magic", "flax_impl.train", "--data-dir", data_dir, "--out-dir", magic / "out",
         "--no-progress", context=damaged)

    marker = base / "code-ran"
    evil_pt(base / "evil.pt", marker)
    case("evil pt", "torch_impl.evaluate", "--weights", base / "evil.pt", context=marker)

    prefix = _unprivileged()
    if prefix is not None:
        locked = base / "read-only"
        locked.mkdir()
        locked.chmod(0o555)
        case("out dir not writable", "torch_impl.train", "--out-dir", locked,
             prefix=prefix, context=locked)
        case("data dir not writable", "torch_impl.train", "--data-dir", locked, "--out-dir",
             base / "ro-data-out", "--no-progress", prefix=prefix, context=locked)
    started = {name: (start_cli(module, *args, env=env, prefix=case_prefix or ()), context)
               for name, (case_prefix, module, args, env, context) in cases.items()}
    results = {name: (finish(process, timeout=240), context)
               for name, (process, context) in started.items()}
    return results, prefix


SUBPROCESS = {
    "flag": ("torch", "argument --epochs: must be at least 1, got 0"),
    "wrong magic": ("flax", "has the wrong magic number"),
    "evil pt": ("torch", "refused: not a plain state_dict of tensors"),
    "out dir not writable": ("torch", "not writable (Permission denied)"),
    "data dir not writable": ("torch", "cannot write the MNIST files into"),
}


@pytest.mark.data
@pytest.mark.parametrize("name", SUBPROCESS.keys())
def test_real_command(subprocess_cases, name):
    results, prefix = subprocess_cases
    if name.endswith("not writable") and prefix is None:
        pytest.skip("running as root and setpriv cannot drop CAP_DAC_OVERRIDE here: root "
                    "writes anywhere, so an unwritable directory cannot be made")
    done, context = results[name]
    framework, words = SUBPROCESS[name]
    module = done.args[done.args.index("-m") + 1]
    assert_usage_error(done.returncode, done.stderr, f"python -m {module}", words)
    assert done.stdout == ""
    if name == "wrong magic":
        assert context.read_bytes()[:4] == b"\x00\x00\x08\x03"
    elif name.endswith("evil pt"):
        assert not context.exists(), "unpickling ran the payload"
    elif name.endswith("not writable"):
        assert list(context.iterdir()) == []

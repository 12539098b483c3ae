"""The two engines mirror each other, and the CLIs stay thin."""

import ast
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flax_impl import backend as flax_backend
from mnist_common.backend import Backend, public_functions
from torch_impl import backend as torch_backend

REPO = Path(__file__).resolve().parents[1]
CLI_MODULES = {"torch_impl.train", "torch_impl.evaluate", "flax_impl.train",
               "flax_impl.evaluate", "mnist_common.compare"}


def test_both_engines_define_the_interface_with_the_same_parameters():
    torch_functions = public_functions(torch_backend)
    assert torch_functions == public_functions(flax_backend)
    assert len(torch_functions) >= 15
    assert torch_backend.FRAMEWORK == "torch" and flax_backend.FRAMEWORK == "flax"


def top_level_functions(path):
    """[(name, parameter names)] of the public functions `path` defines, in file order."""
    return [(node.name, [a.arg for a in node.args.posonlyargs + node.args.args
                         + node.args.kwonlyargs])
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")]


@pytest.mark.parametrize("name", ["backend.py", "distributed.py"])
def test_engine_modules_mirror_each_other(name):
    """Same public functions, same order, same parameters: a side-by-side diff shows only the
    framework."""
    torch_side = top_level_functions(REPO / "torch_impl" / name)
    flax_side = top_level_functions(REPO / "flax_impl" / name)
    assert [n for n, _ in torch_side] == [n for n, _ in flax_side]
    assert torch_side == flax_side
    assert len(torch_side) >= (15 if name == "backend.py" else 8)


def function_bodies(path):
    """{AST dump of a function's body without its docstring: where} for every function and
    method in `path`, nested ones included; empty bodies (a docstring alone) left out."""
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            body = node.body if isinstance(node.body, list) else [ast.Return(node.body)]
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            if body:
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                out[ast.dump(ast.Module(body=body, type_ignores=[]))] = where
    return out


def test_no_function_body_is_written_in_both_engines():
    """What is the same in both engines lives once, in mnist_common (whatever its name)."""
    files = {side: {} for side in ("torch_impl", "flax_impl")}
    for side, name in itertools.product(files, ("backend.py", "distributed.py")):
        files[side].update(function_bodies(REPO / side / name))
    shared = set(files["torch_impl"]) & set(files["flax_impl"])
    assert not shared, sorted((files["torch_impl"][b], files["flax_impl"][b]) for b in shared)


def test_the_engines_have_no_other_public_functions():
    interface = {name for name in vars(Backend) if not name.startswith("_")}
    for backend in (torch_backend, flax_backend):
        public = {name for name, value in vars(backend).items()
                  if callable(value) and not name.startswith("_") and not isinstance(value, type)
                  and getattr(value, "__module__", backend.__name__) == backend.__name__}
        assert public <= interface, (backend.__name__, public - interface)


def test_no_library_code_imports_a_cli_module():
    """The CLIs are entry points; only the tests that test them (in-process) import them."""
    offenders = []
    for path in REPO.rglob("*.py"):
        parts = path.relative_to(REPO).parts
        if parts[0] in (".venv", "tests", "parity_tests") or path.name == "conftest.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n in CLI_MODULES]
    assert offenders == []


@pytest.mark.parametrize("module", sorted(CLI_MODULES - {"mnist_common.compare"}))
def test_help_imports_no_framework(module):
    code = (f"import sys, runpy\nsys.argv = ['x', '--help']\n"
            f"try:\n    runpy.run_module('{module}', run_name='__main__')\n"
            f"except SystemExit:\n    pass\n"
            f"print(sorted(m for m in ('torch', 'jax', 'flax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert done.stdout.count("(default:") >= 3  # defaults are stated
    assert "(default: None)" not in done.stdout and "(default: True)" not in done.stdout


def test_masked_cross_entropy_agrees_between_engines():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=6)
    mask = np.array([1, 1, 0, 1, 0, 1], np.float32)
    torch_loss = torch_backend.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                             torch.from_numpy(mask))
    flax_loss = flax_backend.cross_entropy(logits, labels.astype(np.int32), mask)
    kept = torch_backend.cross_entropy(torch.from_numpy(logits[mask == 1]),
                                       torch.from_numpy(labels[mask == 1]))
    assert abs(float(torch_loss) - float(kept)) <= 1e-6
    assert abs(float(flax_loss) - float(kept)) <= 1e-6


@pytest.fixture
def precision_switches():
    """The frameworks' process-wide precision switches, restored after the test."""
    import jax

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             jax.config.jax_default_matmul_precision)
    yield jax
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    jax.config.update("jax_default_matmul_precision", saved[2])


def test_precision_sets_each_frameworks_own_switches(precision_switches):
    """--precision is applied, not only recorded: tf32 turns on TF32 for torch's matmuls and
    cuDNN convolutions on CUDA and sets JAX's default matmul precision on a GPU; highest turns
    them off; a CPU device leaves JAX's setting alone and torch's TF32 off."""
    from types import SimpleNamespace

    jax = precision_switches
    for precision, device, tf32 in (("tf32", "cuda", True), ("highest", "cuda", False),
                                    ("tf32", "cpu", False)):
        torch_backend._set_precision(precision, torch.device(device))
        assert torch.backends.cuda.matmul.allow_tf32 is tf32, (precision, device)
        assert torch.backends.cudnn.allow_tf32 is tf32, (precision, device)
    gpu, cpu = SimpleNamespace(platform="gpu"), SimpleNamespace(platform="cpu")
    for precision, setting in (("tf32", "tensorfloat32"), ("highest", "highest")):
        flax_backend._set_precision(precision, gpu)
        assert jax.config.jax_default_matmul_precision == setting, precision
    flax_backend._set_precision("tf32", cpu)
    assert jax.config.jax_default_matmul_precision == "highest"

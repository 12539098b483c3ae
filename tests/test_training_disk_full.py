"""A full disk while training, for both frameworks: one line, exit status 2, nothing lost.

Every write a run makes is hit: the checkpoint (a fresh run and `--resume`), and each final
output (model.safetensors, loss.png, metrics.json). Afterwards the files of the earlier run and
`checkpoints/latest` are unchanged, and no temp file or temp checkpoint dir is left. The injected
cases raise ENOSPC the way each writer really does (safetensors' SafetensorError, an OSError from
PIL or a file write) and always run; one test fills a real size-limited tmpfs and is skipped
where mounting is not permitted.
"""

import errno
import os
import pathlib

import pytest
from cli_helpers import assert_error_after_status
from disk_helpers import litter
from safetensors import SafetensorError
from training_helpers import train_cli

from mnist_common import weights
from mnist_common.checkpoints import LATEST, checkpoint_root, load_checkpoint
from mnist_common.config import FRAMEWORKS, cli_name

pytestmark = pytest.mark.data
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
FILES = ("metrics.json", "model.safetensors", "loss.png")


def snapshot(out_dir):
    """Every file under `out_dir` and its bytes (the lock file aside)."""
    return {str(p.relative_to(out_dir)): p.read_bytes() for p in sorted(out_dir.rglob("*"))
            if p.is_file() and p.name != ".train.lock"}


def finished_run(framework, out_dir, capsys, steps=3):
    code, _, err = train_cli(framework, out_dir, capsys, "--max-steps", steps)
    assert code == 0, err
    return snapshot(out_dir)


def assert_nothing_lost(out_dir, before, step=3):
    assert snapshot(out_dir) == before
    assert (checkpoint_root(out_dir) / LATEST).read_text() == f"step-{step:07d}\n"
    assert load_checkpoint(out_dir).progress["global_step"] == step
    assert litter(out_dir) == []


# --- injected ENOSPC ----------------------------------------------------------------------------


def fail_safetensors_writes(monkeypatch, when):
    """safetensors' writer (as mnist_common.weights calls it) finds the disk full for paths
    `when(path)` accepts, after writing part of the file, as a real full disk does."""
    real = weights.save_file

    def save_file(tensors, filename, metadata=None):
        if when(pathlib.Path(filename)):
            pathlib.Path(filename).write_bytes(b"\0" * 1000)
            raise SafetensorError(SAFETENSORS_FULL)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(weights, "save_file", save_file)


def in_checkpoint(path):
    return path.parent.name.startswith(".step-")


def optimizer_in_checkpoint(path):  # model.safetensors is already in the temp dir by then
    return in_checkpoint(path) and path.name.startswith(".optimizer.safetensors.")


def final_model(path):
    return path.name.startswith(".model.safetensors.") and not in_checkpoint(path)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("when", [in_checkpoint, optimizer_in_checkpoint],
                         ids=["model file", "optimizer file"])
def test_checkpoint_write_on_a_full_disk(framework, when, small_mnist,
                                         tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "run"
    before = finished_run(framework, out_dir, capsys)
    fail_safetensors_writes(monkeypatch, when)
    # The same command again (allowed), then a resume that trains further: both must checkpoint.
    for flags in (["--max-steps", 3], ["--max-steps", 5, "--resume"]):
        code, out, err = train_cli(framework, out_dir, capsys, *flags)
        line = assert_error_after_status(
            code, err, cli_name(framework),
            f"cannot write a checkpoint into {checkpoint_root(out_dir)} (No space left on device)")
        assert out == ""
        assert_nothing_lost(out_dir, before)
    assert line.endswith(f"the last good checkpoint (step 3) is kept in "
                         f"{checkpoint_root(out_dir)}")


def fail_png(monkeypatch):
    """PIL reports a full disk as a plain OSError(ENOSPC), after part of the file."""
    from matplotlib.figure import Figure

    def savefig(self, fname, **kwargs):
        pathlib.Path(fname).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", savefig)


def fail_metrics(monkeypatch):
    """A text write that finds the disk full half-way (the temp file of metrics.json)."""
    real = pathlib.Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(".metrics.json."):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


OUTPUT_FAILURES = {
    "model.safetensors": lambda mp: fail_safetensors_writes(mp, final_model),
    "loss.png": fail_png,
    "metrics.json": fail_metrics,
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("output", OUTPUT_FAILURES)
def test_final_output_write_on_a_full_disk(framework, output, small_mnist,
                                           tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "run"
    before = finished_run(framework, out_dir, capsys)
    OUTPUT_FAILURES[output](monkeypatch)
    # --resume of the finished run only rewrites the outputs; the fresh rerun trains first.
    for flags in (["--max-steps", 3, "--resume"], ["--max-steps", 3]):
        code, out, err = train_cli(framework, out_dir, capsys, *flags)
        assert_error_after_status(code, err, cli_name(framework), "cannot write the outputs into "
                                  f"{out_dir} (No space left on device)")
        assert out == ""
        # The rerun is bit-identical, so even the outputs written before the failing one are.
        after = snapshot(out_dir)
        assert after[output] == before[output]
        assert {k: v for k, v in after.items() if not k.startswith("checkpoints")} == {
            k: v for k, v in before.items() if not k.startswith("checkpoints")}
        assert litter(out_dir) == []
        assert load_checkpoint(out_dir).progress["global_step"] == 3


def test_atomic_path_turns_a_safetensors_error_into_enospc(tmp_path, monkeypatch):
    fail_safetensors_writes(monkeypatch, lambda path: True)
    with pytest.raises(OSError) as err:
        weights.save_arrays(tmp_path / "a.safetensors", {"x": weights.np.zeros(3)})
    assert err.value.errno == errno.ENOSPC and err.value.strerror == os.strerror(errno.ENOSPC)
    assert list(tmp_path.iterdir()) == []


# --- a real full filesystem ---------------------------------------------------------------------


def fill(mount_point, leave):
    """Fill the filesystem up to about `leave` free bytes."""
    filler = mount_point / "filler"
    filler.unlink(missing_ok=True)
    stats = os.statvfs(mount_point)
    free = stats.f_bavail * stats.f_frsize
    with open(filler, "wb") as out:
        out.write(bytes(max(free - leave, 0)))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_real_full_filesystem(framework, small_mnist, tmpfs, capsys):
    small_filesystem = tmpfs("16m")  # skipped where mounting is not permitted
    out_dir = small_filesystem / "run"
    before = finished_run(framework, out_dir, capsys)
    # 700 kB free: a checkpoint's model.safetensors (493 kB) fits, its optimizer file (986 kB)
    # does not, so the temp checkpoint dir holds a file when the disk fills. 200 kB free: the
    # final model.safetensors (the first output written) does not fit.
    cases = [(["--max-steps", 3], 700_000, "cannot write a checkpoint into"),  # same command
             (["--max-steps", 5, "--resume"], 700_000, "cannot write a checkpoint into"),
             (["--max-steps", 3, "--resume"], 200_000, "cannot write the outputs into")]
    for flags, leave, words in cases:
        fill(small_filesystem, leave)
        code, out, err = train_cli(framework, out_dir, capsys, *flags)
        assert_error_after_status(code, err, cli_name(framework), words,
                                  "(No space left on device)")
        assert out == ""
        assert_nothing_lost(out_dir, before)
    (small_filesystem / "filler").unlink()  # space again: the resume goes on from step 3
    code, _, err = train_cli(framework, out_dir, capsys, "--max-steps", 5, "--resume")
    assert code == 0, err
    assert load_checkpoint(out_dir).progress["global_step"] == 5
    assert litter(out_dir) == []

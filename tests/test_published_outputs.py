"""A run's three outputs are one set: after Ctrl-C, a failed write or a kill while they are
written, the out-dir holds the earlier complete set or the new one, never a mix; the message
says how to finish, and that command gives the outputs of an uninterrupted run, bit for bit."""

import os
import signal

import pytest
from cli_helpers import assert_same_run
from training_helpers import train_cli

from mnist_common import ownership, publishing, reporting
from mnist_common.config import FRAMEWORKS

OUTPUTS = ("model.safetensors", "metrics.json", "loss.png")


def outputs(out_dir):
    """The outputs' bytes (None where absent), and whether anything staged is left."""
    files = {n: (out_dir / n).read_bytes() if (out_dir / n).exists() else None for n in OUTPUTS}
    return files, sorted(p.name for p in out_dir.glob(".outputs.tmp-*"))


def same_outputs(actual, expected):
    """The run's figures and weights bit for bit, and the same loss figure."""
    assert_same_run(actual, expected)
    for name in ("model.safetensors", "loss.png"):
        assert (actual / name).read_bytes() == (expected / name).read_bytes(), name


@pytest.fixture
def uninterrupted(small_mnist, tmp_path, capsys):
    """Per framework: a run of 4 steps extended with --resume --max-steps 8, undisturbed."""
    def run(framework):
        out_dir = tmp_path / f"whole-{framework}"
        for flags in (["--max-steps", 4], ["--max-steps", 8, "--resume"]):
            code, _, err = train_cli(framework, out_dir, capsys, *flags)
            assert code == 0, err
        return out_dir
    return run


def ctrl_c_while_drawing(monkeypatch):
    """Ctrl-C arrives while loss.png is drawn."""
    real = reporting.plot_losses

    def plot_losses(path, metrics):
        os.kill(os.getpid(), signal.SIGINT)
        real(path, metrics)

    monkeypatch.setattr(reporting, "plot_losses", plot_losses)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_ctrl_c_while_extending_keeps_the_earlier_set(framework, uninterrupted, tmp_path,
                                                      monkeypatch, capsys):
    out_dir = tmp_path / "run"
    code, _, err = train_cli(framework, out_dir, capsys, "--max-steps", 4)
    assert code == 0, err
    earlier = outputs(out_dir)
    with monkeypatch.context() as patch:
        ctrl_c_while_drawing(patch)
        code, out, err = train_cli(framework, out_dir, capsys, "--max-steps", 8, "--resume")
    assert code == 130, err
    assert outputs(out_dir) == earlier
    assert "SIGINT while writing the outputs" in out + err
    assert "--resume" in out + err and "--max-steps 8" in out + err
    code, _, err = train_cli(framework, out_dir, capsys, "--max-steps", 8, "--resume")
    assert code == 0, err
    same_outputs(out_dir, uninterrupted(framework))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_ctrl_c_while_a_fresh_run_writes_leaves_no_output(framework, small_mnist, tmp_path,
                                                          monkeypatch, capsys):
    out_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        ctrl_c_while_drawing(patch)
        code, out, err = train_cli(framework, out_dir, capsys, "--max-steps", 4)
    assert code == 130, err
    assert outputs(out_dir) == ({n: None for n in OUTPUTS}, [])
    code, _, err = train_cli(framework, out_dir, capsys, "--max-steps", 4, "--resume")
    assert code == 0, err
    assert all(outputs(out_dir)[0].values())


def test_a_failed_write_keeps_the_earlier_set(small_mnist, tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "run"
    code, _, err = train_cli("torch", out_dir, capsys, "--max-steps", 4)
    assert code == 0, err
    earlier = outputs(out_dir)

    def full_disk(path, metrics):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reporting, "write_metrics", full_disk)  # the last file written
    code, _, err = train_cli("torch", out_dir, capsys, "--max-steps", 8, "--resume")
    assert code == 2 and "cannot write the outputs" in err, err
    assert outputs(out_dir) == earlier


def test_a_kill_between_the_renames_is_completed_by_the_next_run(uninterrupted, tmp_path,
                                                                  monkeypatch, capsys):
    out_dir = tmp_path / "run"
    code, _, err = train_cli("torch", out_dir, capsys, "--max-steps", 4)
    assert code == 0, err
    real, moved = publishing.adopt_file, []

    def killed_after_one(source, target):
        if moved:
            raise KeyboardInterrupt  # as a kill would stop it: nothing after runs
        moved.append(real(source, target))

    with monkeypatch.context() as patch:
        patch.setattr(publishing, "adopt_file", killed_after_one)
        code, _, _ = train_cli("torch", out_dir, capsys, "--max-steps", 8, "--resume")
    assert code == 130 and moved
    publishing.finish_interrupted(out_dir)  # what the next run of the out-dir does first
    assert outputs(out_dir)[1] == []
    same_outputs(out_dir, uninterrupted("torch"))


def quick_writers(patch, fail_at=None):
    """write_outputs' three writers replaced by quick ones that write `repr` of their input the
    project's way (`write_owned`); the one named `fail_at` stops the process instead, as a kill
    would: the files written before it stay."""
    def writer(name):
        def write(path, content):
            if name == fail_at:
                raise KeyboardInterrupt
            ownership.write_owned(path, f"{name}: {content!r}")
        return write

    for attr in ("save_weights", "plot_losses", "write_metrics"):
        patch.setattr(reporting, attr, writer(attr))


def publish(out_dir, params, metrics):
    """What a run does with its outputs: stage them whole, then swap them in."""
    publishing.swap_in(out_dir, publishing.stage(out_dir, params, metrics))


def test_a_kill_while_staging_leaves_no_set_the_next_run_takes_for_complete(tmp_path,
                                                                            monkeypatch):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    with monkeypatch.context() as patch:
        quick_writers(patch)
        publish(out_dir, "earlier weights", "earlier metrics")
    earlier = outputs(out_dir)
    assert all(earlier[0].values()) and earlier[1] == []
    with monkeypatch.context() as patch:  # killed after model.safetensors, drawing loss.png
        quick_writers(patch, fail_at="plot_losses")
        patch.setattr(publishing, "remove_owned", lambda path: False)  # a kill cleans nothing
        with pytest.raises(KeyboardInterrupt):
            publishing.stage(out_dir, "later weights", "later metrics")
    staged = outputs(out_dir)[1]
    assert len(staged) == 1 and (out_dir / staged[0] / "model.safetensors").is_file()
    assert outputs(out_dir)[0] == earlier[0]
    publishing.finish_interrupted(out_dir)  # what the next run of the out-dir does first
    assert outputs(out_dir)[0] == earlier[0]  # nothing of the half-staged set went in
    assert b"later" not in (out_dir / "model.safetensors").read_bytes()
    ownership.remove_leftovers(out_dir)  # ...and then: the half-staged folder is cleared
    assert outputs(out_dir) == earlier


def test_the_outputs_are_renamed_into_place_in_the_documented_order(tmp_path, monkeypatch):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    real, renamed = publishing.adopt_file, []

    def recorded(source, target):
        renamed.append((source.name, target.name))
        return real(source, target)

    quick_writers(monkeypatch)
    monkeypatch.setattr(publishing, "adopt_file", recorded)
    publish(out_dir, "weights", "metrics")
    assert renamed == [(name, name) for name in OUTPUTS]  # in the order of OUTPUTS
    assert OUTPUTS == reporting.OUTPUTS
    assert all(outputs(out_dir)[0].values()) and outputs(out_dir)[1] == []

"""Test helper: checkpoint writers that get SIGKILLed part-way (run by test_checkpoints.py).

    python tests/checkpoint_writer.py BASE SEED COUNT

runs three experiments, each writer a forked child that this process SIGKILLs:
  previous: for n = 1, 2, ...: in BASE/previous/kill-NNN, which holds a complete step-1
      checkpoint, a child saves step 2 and stops dead at its n-th filesystem operation (open,
      mkdir, rename, chmod, remove, rmtree, listdir, ...; seen through an audit hook), where it
      is killed. Stops at the first n the save outlives.
  first: the same with no earlier checkpoint (BASE/first/kill-NNN).
  beside: the same as previous, with a user's file (USER_FILE) in the step-1 checkpoint's
      directory, beside its files (BASE/beside/kill-NNN).
  random: COUNT times, in BASE/random/random-NN (holding a step-1 checkpoint), a child saves
      steps 2, 3, ... in a loop and is killed after a pseudo-random delay (from SEED), which can
      land in the middle of writing a file.
Prints a JSON summary. Checkpoint contents encode their step: every array is filled with it.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from mnist_common.checkpoints import save_checkpoint
from mnist_common.weights import CANONICAL_SHAPES

FS_EVENTS = ("open", "os.", "shutil.")
USER_FILE = ("step-0000001", "notes.txt", "my notes on step 1\n")  # (directory, name, text)


def arrays(step):
    """(params, optimizer, progress) of a fake run at `step`, every value equal to `step`."""
    params = {k: np.full(shape, step, np.float32) for k, shape in CANONICAL_SHAPES.items()}
    optimizer = {"step": np.asarray([step], np.float32)}
    for key, shape in CANONICAL_SHAPES.items():
        optimizer[f"exp_avg.{key}"] = np.full(shape, step, np.float32)
        optimizer[f"exp_avg_sq.{key}"] = np.full(shape, step, np.float32)
    progress = {"framework": "torch", "epoch": 0, "step_in_epoch": step, "global_step": step,
                "target_steps": 1000, "train_seconds": 0.0, "step_losses": [float(step)] * step,
                "epochs": [], "config": {"batch_size": 16, "lr": 2e-4, "seed": 0}}
    return params, optimizer, progress


def save(out_dir, step):
    save_checkpoint(out_dir, *arrays(step))


def _block_at(n, ready_fd):
    """Install an audit hook that freezes the process at its n-th filesystem operation."""
    seen = [0]

    def hook(event, args):
        if not event.startswith(FS_EVENTS):
            return
        seen[0] += 1
        if seen[0] == n:
            os.write(ready_fd, b"x")  # os.write raises no audit event
            while True:
                time.sleep(60)

    sys.addaudithook(hook)


def put_user_file(out_dir):
    """The user's file, in the step-1 checkpoint's directory beside its files."""
    directory, name, text = USER_FILE
    (out_dir / "checkpoints" / directory / name).write_text(text)


def enumerate_kills(base, previous, beside=False):
    killed, completed_at = [], None
    for n in range(1, 500):
        out_dir = base / f"kill-{n:03d}"
        out_dir.mkdir(parents=True)
        if previous:
            save(out_dir, 1)
        if beside:
            put_user_file(out_dir)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer
            code = 1
            try:
                os.close(read_fd)
                _block_at(n, write_fd)
                save(out_dir, 2)
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        frozen = os.read(read_fd, 1)  # b"" when the child exits without freezing
        os.close(read_fd)
        if frozen:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if not frozen:
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"the writer failed at n={n}")
            completed_at = n
            break
        killed.append(str(out_dir))
    return {"killed": killed, "completed_at": completed_at}


def random_kills(base, seed, count):
    rng = np.random.default_rng(seed)
    killed = []
    for i in range(count):
        out_dir = base / f"random-{i:02d}"
        out_dir.mkdir(parents=True)
        save(out_dir, 1)
        pid = os.fork()
        if pid == 0:
            try:
                step = 2
                while True:
                    save(out_dir, step)
                    step += 1
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.02, 0.5))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        killed.append(str(out_dir))
    return {"killed": killed}


def main(argv):
    base, seed, count = Path(argv[0]), int(argv[1]), int(argv[2])
    summary = {"previous": enumerate_kills(base / "previous", previous=True),
               "first": enumerate_kills(base / "first", previous=False),
               "beside": enumerate_kills(base / "beside", previous=True, beside=True),
               "random": random_kills(base / "random", seed, count)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Training in-process on a small set: the first 100 training and 200 test images of the real
MNIST, so that with --batch-size 16 an epoch is 7 steps (the last one 4 images) and a run crosses
epoch ends, a partial last batch and a `--max-steps` stop in a handful of steps.

`train_cli` goes through a training CLI's `main` (flags, exit status, stdout and stderr);
`train_config` calls its `train_and_evaluate` with a `Config` (errors are raised).
"""

from cli_helpers import TRAIN, run_in_process

from mnist_common.config import Config, cli_name

SMALL_TRAIN = 100  # with --batch-size 16: 7 steps per epoch, the last one 4 images
SMALL_TEST = 200


def use_small_mnist(monkeypatch, real_splits, train=SMALL_TRAIN, test=SMALL_TEST):
    """Make training read the first `train` training and `test` test images."""
    from mnist_common import data

    (train_x, train_y), (test_x, test_y) = real_splits
    splits = {True: (train_x[:train], train_y[:train]), False: (test_x[:test], test_y[:test])}
    monkeypatch.setattr(data, "load_arrays", lambda root, train: splits[train])
    return splits


def train_cli(framework, out_dir, capsys, *flags, epochs=1):
    """The training CLI in-process with --batch-size 16 --epochs EPOCHS --no-progress
    --out-dir OUT_DIR FLAGS: (exit status, stdout, stderr)."""
    argv = ["--batch-size", "16", "--epochs", str(epochs), "--no-progress", "--out-dir",
            str(out_dir), *map(str, flags)]
    return run_in_process(TRAIN[framework], argv, cli_name(framework), capsys)


def train_config(framework, out_dir, **flags):
    """One training run as the CLI would do it, from Config(batch_size=16, no progress,
    **flags); the metrics."""
    config = Config(batch_size=16, out_dir=str(out_dir), progress=False, **flags)
    if framework == "torch":
        from torch_impl import train as cli
    else:
        from flax_impl import train as cli
    return cli.train_and_evaluate(config)


def nan_loss_at_step(monkeypatch, backend, step):
    """Patch `backend.train_step` (torch) to report a NaN loss at its `step`-th call (1-based);
    the weights still take the real step. Returns the real train_step."""
    import torch  # here: most users of this module never load torch

    real_step, calls = backend.train_step, [0]

    def train_step(state, batch):
        calls[0] += 1
        state, metrics = real_step(state, batch)
        return state, {"loss": torch.tensor(float("nan"))} if calls[0] == step else metrics

    monkeypatch.setattr(backend, "train_step", train_step)
    return real_step


def checkpoint_step(out_dir):
    """The step of the checkpoint in `out_dir`."""
    from mnist_common.checkpoints import load_checkpoint

    return load_checkpoint(out_dir).progress["global_step"]

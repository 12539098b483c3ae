"""The run configuration both CLIs share: one frozen dataclass, one argparse builder, and the
command lines that messages print. Importing this module imports no framework, so `--help` and
a bad flag answer at once."""

import argparse
import dataclasses
import math
import shlex

from mnist_common.errors import ArgumentParser, UsageError

DEVICES = ("auto", "cpu", "cuda", "gpu")
LOADERS = ("memory", "dataloader")
PRECISIONS = ("highest", "tf32")
PRECISION_HELP = ("highest: true float32 convolutions and matmuls in both frameworks; tf32: "
                  "both may use TF32 on a GPU. A CPU computes float32 either way")


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyper-parameters and run options; defaults are the tutorial's."""

    epochs: int = 10  # the tutorial's num_epoch
    batch_size: int = 256  # the tutorial's batch_size
    lr: float = 2e-4  # the tutorial's learning_rate (Adam, betas 0.9/0.999, eps 1e-8)
    seed: int = 0  # initial weights and the shuffling order both derive from it
    device: str = "auto"  # auto picks the accelerator when there is one
    data_dir: str | None = None  # None: $MNIST_DATA_DIR, else a per-user cache dir
    out_dir: str | None = None  # None: runs/<framework>
    loader: str = "memory"  # memory: in-memory uint8 tensor; dataloader: torch DataLoader
    max_steps: int | None = None  # stop training after this many steps, still evaluate
    progress: bool = True  # tqdm bars (also off when stderr is not a terminal)
    resume: bool = False  # continue from the checkpoint in out_dir
    resume_from: str | None = None  # start a new run in out_dir from another run's checkpoint
    precision: str = "highest"  # the tutorial's float32 arithmetic; "tf32" on a GPU is faster
    overwrite: bool = False  # replace a finished run of another framework or configuration
    steps_per_dispatch: int | None = None  # None: the engine's choice (1 on a CPU, else an epoch)

    def __post_init__(self):
        # The flags' own checks (below) are these: each value is checked by one function.
        for name, check in _CHECKS.items():
            value = getattr(self, name)
            if value is None and name in ("max_steps", "steps_per_dispatch"):
                continue
            try:
                check(value)
            except ValueError as err:
                raise UsageError(f"--{name.replace('_', '-')} {err}") from None
        for name, choices in (("device", DEVICES), ("precision", PRECISIONS),
                              ("loader", LOADERS)):
            if getattr(self, name) not in choices:
                raise UsageError(f"--{name} {getattr(self, name)}: unknown {name} "
                                 f"(choose {', '.join(choices)})")
        if self.resume and self.resume_from is not None:
            raise UsageError("--resume continues the run in --out-dir, --resume-from starts a new "
                             "one from another run's checkpoint: pass one of them")


def _check_count(value):
    """A whole number of at least 1 (epochs, batch size, steps)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be at least 1, got {value!r}")
    return value


def _check_lr(value):
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"must be a finite number > 0, got {value!r}")
    return value


def _check_seed(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ValueError(f"must be in [0, 2**32), got {value!r}")
    return value


_CHECKS = {"epochs": _check_count, "batch_size": _check_count, "lr": _check_lr,
           "seed": _check_seed, "max_steps": _check_count, "steps_per_dispatch": _check_count}


def _flag_type(parse, check):
    """An argparse `type`: the text parsed by `parse`, then checked by `check`."""
    def convert(text):
        try:
            value = parse(text)
        except ValueError:
            what = "a whole number" if parse is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        try:
            return check(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return convert


positive_int = _flag_type(int, _check_count)
_seed = _flag_type(int, _check_seed)
_positive_float = _flag_type(float, _check_lr)


FRAMEWORKS = ("torch", "flax")


def cli_name(framework, tool="train"):
    """The command that runs a CLI, as messages print it: `python -m torch_impl.train`."""
    return f"python -m {framework}_impl.{tool}"


def resume_command(framework, config):
    """The command line that continues the run `config` describes."""
    defaults = Config()
    words = [*cli_name(framework).split(), "--resume", "--out-dir", str(config.out_dir)]
    for field in ("epochs", "batch_size", "lr", "seed", "device", "data_dir", "loader",
                  "max_steps", "precision", "steps_per_dispatch"):
        value = getattr(config, field)
        if value is not None and value != getattr(defaults, field):
            words += ["--" + field.replace("_", "-"), str(value)]
    if not config.progress:
        words.append("--no-progress")
    return shlex.join(words)


def add_device_flags(parser, defaults):
    """--device, --data-dir, --loader, --precision: shared by the training and evaluation CLIs."""
    parser.add_argument("--device", choices=DEVICES, default=defaults.device,
                        help="where to compute; auto picks the GPU when there is one "
                             "(default: %(default)s)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="MNIST root; the files go in DIR/MNIST/raw/ (default: "
                             "$MNIST_DATA_DIR, else ~/.cache/mnist-cnn-parity)")
    parser.add_argument("--loader", choices=LOADERS, default=defaults.loader,
                        help="memory: batches cut from the in-memory uint8 array; dataloader: "
                             "torch DataLoader over torchvision's dataset, the same batches "
                             "(default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                        help=f"{PRECISION_HELP} (default: %(default)s)")


def build_parser(framework, description):
    """The flags both `torch_impl.train` and `flax_impl.train` accept; each default said once."""
    defaults = Config()
    parser = ArgumentParser(prog=cli_name(framework), description=description)
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs, metavar="N",
                        help="passes over the 60,000 training images (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                        metavar="N", help="training images per step (default: %(default)s)")
    parser.add_argument("--lr", type=_positive_float, default=defaults.lr, metavar="LR",
                        help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=_seed, default=defaults.seed, metavar="S",
                        help="seed for the initial weights and the shuffling order "
                             "(default: %(default)s)")
    add_device_flags(parser, defaults)
    parser.add_argument("--out-dir", default=None, metavar="DIR",
                        help=f"where metrics.json, model.safetensors, loss.png and the checkpoint "
                             f"go (default: runs/{framework})")
    parser.add_argument("--max-steps", type=positive_int, default=None, metavar="N",
                        help="stop training after N steps, still evaluate and write the outputs "
                             "(default: train every epoch)")
    parser.add_argument("--steps-per-dispatch", type=positive_int, default=None, metavar="N",
                        help="train steps per call into the engine, each call one host "
                             "synchronisation (Flax: one lax.scan); results are the same "
                             "(default: 1 on a CPU, an epoch on a GPU)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide the progress bars (shown by default when stderr is a terminal)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run whose checkpoint is in --out-dir (same "
                             "--batch-size, --lr and --seed; --epochs and --max-steps may grow)")
    parser.add_argument("--resume-from", default=None, metavar="PATH",
                        help="start this run from a checkpoint written by either framework: a "
                             "run's --out-dir, its checkpoints/ dir or one step-NNNNNNN dir "
                             "(weights, Adam state, position; same --batch-size, --lr, --seed)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished run in --out-dir made by the other framework or "
                             "with other flags (rerunning the same command needs no flag)")
    return parser


def parse_config(framework, description, argv=None):
    """Parse the command line into a Config; a bad value is a UsageError (one line, exit 2)."""
    args = build_parser(framework, description).parse_args(argv)
    values = vars(args)
    if values["out_dir"] is None:
        values["out_dir"] = f"runs/{framework}"
    return Config(**values)

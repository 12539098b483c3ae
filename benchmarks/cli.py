"""The command line of `python benchmarks/run.py`: flags -> settings -> each device measured
(`benchmarks.session`) and its results published once complete; `--render` writes a report from
a results JSON; `run.py scaling` runs the training CLIs on 1 and N processes / devices."""

import argparse
import math
import sys
from pathlib import Path

from benchmarks import PROG, REPO, RESULTS_DIR, TARGET_ACCURACY, TUTORIAL, VARIANTS
from mnist_common.config import PRECISIONS, positive_int
from mnist_common.errors import ArgumentParser
from mnist_common.fileio import say

TRAIN_BATCH_SIZES = (64, 256, 1024)
INFERENCE_BATCH_SIZES = (1, 256, 10_000)


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def comma_list(item_type):
    """An argparse type: `a,b,c` -> (a, b, c), each checked by `item_type`, duplicates dropped."""
    def parse(text):
        items = tuple(dict.fromkeys(item_type(i.strip()) for i in text.split(",") if i.strip()))
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return items
    return parse


def variant(text):
    if text not in VARIANTS:
        raise argparse.ArgumentTypeError(f"unknown variant {text!r} (choose from "
                                         f"{', '.join(VARIANTS)})")
    return text


def build_parser():
    """The flags of `python benchmarks/run.py`: what to measure, how long, which sections."""
    parser = ArgumentParser(prog=PROG, description="Side-by-side speed of the tutorial MNIST "
                            "CNN in PyTorch and in Flax, timed on the engines the training CLIs "
                            "run.", epilog=f"{PROG} scaling --help: data-parallel scaling")
    flag = parser.add_argument
    flag("--quick", action="store_true",
         help="a tiny run for CI (seconds): batch 64, inference batches 1 and 256, 2 repeats of 2 "
              "calls, no torch.compile, layers at batch 64, 2 end-to-end steps if MNIST is "
              "already prepared; results in a new scratch directory unless --out-dir")
    flag("--device", choices=("cpu", "gpu", "cuda", "all"), default="all",
         help="where to measure; all = the CPU, and the GPU if any (default: %(default)s)")
    flag("--precision", choices=PRECISIONS, default="highest",
         help="highest: true float32 convolutions and matmuls in both frameworks; tf32: both may "
              "use TF32 on a GPU (a CPU computes float32 either way) (default: %(default)s)")
    flag("--batch-sizes", type=comma_list(positive_int), metavar="N,N,...",
         help=f"training batch sizes (default: {','.join(map(str, TRAIN_BATCH_SIZES))}; "
              "--quick: 64)")
    flag("--inference-batch-sizes", type=comma_list(positive_int), metavar="N,N,...",
         help="inference batch sizes; batch 1 also gives the latency (default: "
              f"{','.join(map(str, INFERENCE_BATCH_SIZES))}; --quick: 1,256)")
    flag("--variants", type=comma_list(variant), metavar="V,V,...",
         help=f"which variants (default: {','.join(VARIANTS)}; --quick: all but torch-compile); "
              "flax-xla-defaults runs only where the Flax engine differs from a plain jax.jit of "
              "the stock module (the CPU)")
    flag("--repeats", type=positive_int, metavar="N",
         help="timed windows per measurement (default: 5; --quick: 2)")
    flag("--window-seconds", type=non_negative_float, metavar="S",
         help="a timed window lasts at least S seconds (default: 0.5; --quick: 0)")
    flag("--out-dir", type=Path, metavar="DIR",
         help=f"where <device>.json, .md and .png go (default: {RESULTS_DIR.relative_to(REPO)}; "
              "--quick: a new scratch directory), never over a file a benchmark did not write")
    flag("--no-layers", dest="layers", action="store_false", help="skip the per-layer timings")
    flag("--no-epoch", dest="epoch", action="store_false",
         help="skip the end-to-end MNIST epoch through the CLIs' loop")
    flag("--cli", action=argparse.BooleanOptionalAction,
         help="run the training CLIs as processes (10 epochs, --quick: 2 steps) and time them "
              "from outside (default: on a GPU only)")
    flag("--render", metavar="X.json", type=Path,
         help="measure nothing: write X.md and X.png from a results JSON")
    flag("--time-to-accuracy", action="store_true",
         help=f"also train through the CLIs' loop (tutorial settings, up to {TUTORIAL.epochs} "
              f"epochs) until {100 * TARGET_ACCURACY:.1f} %% test accuracy")
    return parser


def parse_settings(argv=None):
    """Command line -> settings, --quick's defaults filled in (a bad value: a UsageError)."""
    args = build_parser().parse_args(argv)

    def pick(value, normal, in_quick):
        return value if value is not None else (in_quick if args.quick else normal)

    args.devices = ("gpu",) if args.device == "cuda" else (args.device,)
    args.variants = pick(args.variants, tuple(VARIANTS),
                         tuple(v for v in VARIANTS if v != "torch-compile"))
    args.train_batch_sizes = pick(args.batch_sizes, TRAIN_BATCH_SIZES, (64,))
    args.inference_batch_sizes = pick(args.inference_batch_sizes, INFERENCE_BATCH_SIZES, (1, 256))
    args.layer_batch_size = 64 if args.quick else TUTORIAL.batch_size
    args.repeats, args.warmup_steps = pick(args.repeats, 5, 2), 1
    args.window_seconds = pick(args.window_seconds, 0.5, 0.0)
    args.min_steps = 2 if args.quick else 1  # calls in a timed window, at least
    return args


def parse_scaling(argv):
    parser = ArgumentParser(prog=f"{PROG} scaling", description="Data-parallel scaling: the "
                            "training CLIs' images/s on 1 and N processes (torchrun) or devices "
                            "(a JAX mesh) at global batch 256 on real MNIST; on a CPU the N "
                            "share the same cores (the cost of the split, not a speed-up). "
                            "Writes scaling-<device>.json and .md.",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    flag = parser.add_argument
    flag("--devices", type=comma_list(positive_int), default="1,2", metavar="N,N,...",
         help="process / device counts to run")
    flag("--steps", type=positive_int, default=60, metavar="N",
         help="training steps per run (batch 256)")
    flag("--device", choices=("cpu", "gpu"), default="cpu", help="where to train")
    flag("--out-dir", type=Path, default=RESULTS_DIR, metavar="DIR",
         help="where scaling-<device>.json and .md go")
    return parser.parse_args(argv)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    scaling = argv[:1] == ["scaling"]
    args = parse_scaling(argv[1:]) if scaling else parse_settings(argv)
    from benchmarks import harness, session  # torch and JAX: not for --help or a bad flag

    if not scaling and args.render:
        return session.render(args.render)
    harness.handle_sigterm()  # SIGTERM exits 143, SIGINT 130, as the training CLIs do
    partials = []
    try:
        return (session.run_scaling(args, argv[1:]) if scaling
                else session.run_benchmark(args, partials))
    except BaseException as err:
        signum = harness.stop_signal(err)
        if signum is None:
            raise
        stopped = f"{PROG}: stopped by {signum.name}"  # the one line a stopped run leaves
        say(f"{stopped}; what it measured is in {', '.join(map(str, partials))} (`{PROG} "
            f"--render {partials[-1]}` makes its report); no complete result was replaced"
            if partials else f"{stopped}; nothing written")
        raise SystemExit(128 + signum) from None

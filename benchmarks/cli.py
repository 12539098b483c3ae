"""The command line of `python benchmarks/run.py`: flags -> Settings -> every device measured.

What is measured, on every device present (the CPU always, the GPU when there is one), for each
variant (`benchmarks.variants`), on the engines the training CLIs run:

- training throughput (images/s) of the engine's train step — forward, cross-entropy, backward,
  Adam update, the loss read back to the host as the training loop does — at batch 64, 256 (the
  tutorial's) and 1024, on synthetic data placed by the engine;
- inference throughput (the engine's logits) at batch 1, 256 and 10,000, and single-image latency;
- the first call of every step (compile / jit / autotune), reported on its own;
- achieved GFLOP/s and its share of this device's float32 GEMM rate, measured in the same run;
- every conv and linear layer alone at batch 256, forward and forward+backward;
- end to end: one real MNIST epoch through `mnist_common.loop.train_and_evaluate`, per framework;
- with `--cli` (by default on a GPU): the training CLIs as fresh processes, 10 epochs each;
- with `--time-to-accuracy`: training seconds until test accuracy >= 98.5 %;
- peak host RSS, device memory, and beside every figure the share of the CPUs other processes took.

Results go to `<out-dir>/<device>.{json,md,png}`, written atomically (`--quick`: a new scratch
directory unless `--out-dir` is given). The numbers say which machine made them; nothing here is
typed in by hand.
"""

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import tempfile
from pathlib import Path

from benchmarks import PROG, end_to_end
from benchmarks.accuracy import TARGET_ACCURACY
from benchmarks.environment import find_devices
from benchmarks.plot import write_json, write_reports
from benchmarks.session import SCHEMA, run_device
from benchmarks.timing import status
from benchmarks.variants import TUTORIAL, VARIANTS
from mnist_common.allocator import keep_freed_memory
from mnist_common.config import PRECISIONS, positive_int
from mnist_common.errors import ArgumentParser, UsageError

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = "benchmarks/results"  # under the repository root, wherever it is run from
TRAIN_BATCH_SIZES = (64, 256, 1024)
INFERENCE_BATCH_SIZES = (1, 256, 10_000)
LAYER_BATCH_SIZE = 256  # the tutorial's batch size


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to run; built from the command line."""

    devices: tuple  # ("cpu",), ("gpu",) or ("all",)
    variants: tuple
    train_batch_sizes: tuple
    inference_batch_sizes: tuple
    layer_batch_size: int
    repeats: int  # timed windows per measurement
    window_seconds: float  # a window lasts at least this long ...
    min_steps: int  # ... and holds at least this many calls
    warmup_steps: int  # untimed calls after the first one
    wait_quiet: float  # before each measurement, wait up to this long for a quiet machine
    layers: bool  # each conv/linear layer alone
    epoch: bool  # the end-to-end epoch per framework
    cli: bool | None  # the CLIs as processes; None: on a GPU only
    time_to_accuracy: bool
    precision: str  # --precision, passed to the engines' select_placement
    quick: bool
    out_dir: Path
    render: str | None  # --render: no measurement, only reports from this JSON


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def int_list(text):
    """`64,256,1024` -> (64, 256, 1024); each at least 1."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of whole numbers")
    return tuple(dict.fromkeys(positive_int(item) for item in items))


def variant_list(text):
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in VARIANTS]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"unknown variant {unknown[0]!r} (choose from {', '.join(VARIANTS)})" if unknown
            else "expected a comma-separated list of variants")
    return tuple(dict.fromkeys(items))


def add_selection_flags(parser):
    """What to measure: --quick, --device, --precision, batch sizes, variants."""
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run for CI (seconds): batch 64, inference batches 1 and 256, "
                             "2 repeats of 2 calls, no torch.compile, layers at batch 64, the "
                             "end-to-end epoch cut to 2 steps and only if MNIST is already "
                             "prepared; results go to a new scratch directory unless --out-dir")
    parser.add_argument("--device", choices=("cpu", "gpu", "cuda", "all"), default="all",
                        help="where to measure; all = the CPU and the GPU when there is one "
                             "(default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="highest",
                        help="highest: true float32 convolutions and matmuls in both frameworks; "
                             "tf32: both may use TF32 on a GPU (the engines' select_placement; "
                             "a CPU computes float32 either way) (default: %(default)s)")
    parser.add_argument("--batch-sizes", type=int_list, default=None, metavar="N,N,...",
                        help="training batch sizes (default: "
                             f"{','.join(map(str, TRAIN_BATCH_SIZES))}; --quick: 64)")
    parser.add_argument("--inference-batch-sizes", type=int_list, default=None,
                        metavar="N,N,...",
                        help="inference batch sizes; batch 1 also gives the latency (default: "
                             f"{','.join(map(str, INFERENCE_BATCH_SIZES))}; --quick: 1,256)")
    parser.add_argument("--variants", type=variant_list, default=None, metavar="V,V,...",
                        help=f"which variants (default: {','.join(VARIANTS)}; --quick: all but "
                             "torch-compile); flax-xla-defaults runs only where the Flax engine "
                             "differs from a plain jax.jit of the stock module (the CPU)")


def add_timing_flags(parser):
    parser.add_argument("--repeats", type=positive_int, default=None, metavar="N",
                        help="timed windows per measurement (default: 5; --quick: 2)")
    parser.add_argument("--window-seconds", type=non_negative_float, default=None, metavar="S",
                        help="a timed window lasts at least S seconds (default: 0.5; --quick: 0)")
    parser.add_argument("--min-steps", type=positive_int, default=None, metavar="N",
                        help="a timed window holds at least N calls (default: 1; --quick: 2)")
    parser.add_argument("--wait-quiet", type=non_negative_float, default=0.0, metavar="S",
                        help="before each measurement wait up to S seconds until other "
                             "processes use < 10 %% of the CPUs (for shared machines; default: "
                             "%(default)s)")


def add_section_flags(parser):
    parser.add_argument("--out-dir", default=None, metavar="DIR",
                        help=f"where <device>.json, .md and .png go (default: {RESULTS_DIR}; "
                             "--quick: a new scratch directory, printed)")
    parser.add_argument("--no-layers", dest="layers", action="store_false",
                        help="skip the per-layer timings")
    parser.add_argument("--no-epoch", dest="epoch", action="store_false",
                        help="skip the end-to-end MNIST epoch through the CLIs' loop")
    parser.add_argument("--cli", action=argparse.BooleanOptionalAction, default=None,
                        help="run the training CLIs as processes (python -m <framework>_impl."
                             "train, 10 epochs, --quick: 2 steps) and time them from outside "
                             "(default: on a GPU only; a CPU takes minutes)")
    parser.add_argument("--render", metavar="JSON",
                        help="measure nothing: rewrite the .md and .png beside a results JSON")
    parser.add_argument("--time-to-accuracy", action="store_true",
                        help=f"also train (tutorial settings, up to {TUTORIAL.epochs} epochs, "
                             f"batches placed on the device first) until "
                             f"{100 * TARGET_ACCURACY:.1f} %% test accuracy; slow on a CPU")


def build_parser():
    parser = ArgumentParser(prog=PROG, description="Side-by-side speed of the tutorial MNIST "
                            "CNN in PyTorch and in Flax, timed on the engines the training CLIs "
                            "run.")
    add_selection_flags(parser)
    add_timing_flags(parser)
    add_section_flags(parser)
    return parser


def out_dir_for(args):
    """--out-dir, checked by writing into it; --quick without it: a new scratch directory."""
    if args.out_dir is None and args.quick and not args.render:
        path = Path(tempfile.mkdtemp(prefix="mnist-bench-quick-"))
        status(f"--quick: writing the results to the scratch directory {path}")
        return path
    path = Path(args.out_dir) if args.out_dir is not None else REPO / RESULTS_DIR
    try:
        if not args.render:
            path.mkdir(parents=True, exist_ok=True)
            tempfile.NamedTemporaryFile(dir=path, prefix=".probe-").close()
    except OSError as err:
        raise UsageError(f"--out-dir {args.out_dir}: cannot write there "
                         f"({err.strerror or err})") from None
    return path


def parse_settings(argv=None):
    """Command line -> Settings (a bad value: a UsageError, one line and exit status 2)."""
    args = build_parser().parse_args(argv)
    quick = args.quick

    def pick(value, normal, in_quick):
        return value if value is not None else (in_quick if quick else normal)

    return Settings(
        devices=("gpu",) if args.device == "cuda" else (args.device,),
        variants=pick(args.variants, tuple(VARIANTS),
                      tuple(v for v in VARIANTS if v != "torch-compile")),
        train_batch_sizes=pick(args.batch_sizes, TRAIN_BATCH_SIZES, (64,)),
        inference_batch_sizes=pick(args.inference_batch_sizes, INFERENCE_BATCH_SIZES, (1, 256)),
        layer_batch_size=64 if quick else LAYER_BATCH_SIZE,
        repeats=pick(args.repeats, 5, 2), window_seconds=pick(args.window_seconds, 0.5, 0.0),
        min_steps=pick(args.min_steps, 1, 2), warmup_steps=1, wait_quiet=args.wait_quiet,
        layers=args.layers, epoch=args.epoch, cli=args.cli,
        time_to_accuracy=args.time_to_accuracy, precision=args.precision, quick=quick,
        out_dir=out_dir_for(args), render=args.render)


def fresh_compile_caches():
    """Point torch.compile's caches at a new temp dir, so first-call times are cold compiles."""
    cache = tempfile.mkdtemp(prefix="bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    return cache


def render(json_path):
    """--render: rewrite the .md and .png beside a results JSON; print the Markdown."""
    path = Path(json_path)
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"--render {json_path}: cannot read results ({err})") from None
    if results.get("schema") != SCHEMA:
        raise UsageError(f"--render {json_path}: not a {SCHEMA} results file")
    print(write_reports(results, path.parent))


def stop_on_sigterm(signum, frame):
    """SIGTERM (as from `timeout`) stops the run like Ctrl-C: finished sections are kept."""
    raise KeyboardInterrupt


def measure_devices(settings, latest):
    """Every device in turn; the results of each written and printed when it is done."""
    if settings.cli is not False and settings.devices != ("cpu",):
        end_to_end.keep_gpu_memory_free()  # before JAX starts on the GPU
    devices = find_devices(settings.devices[0], settings.precision)
    data_root, data_problem = None, "--no-epoch, no --time-to-accuracy, --no-cli"
    if settings.epoch or settings.time_to_accuracy or settings.cli is not False:
        data_root, data_problem = end_to_end.prepare_data(settings.quick)

    def save(results):
        latest["results"] = results
        write_json(results, settings.out_dir)

    for device in devices:
        latest.clear()
        results = run_device(device, settings, data_root, data_problem, save)
        write_json(results, settings.out_dir)
        text = write_reports(results, settings.out_dir)
        status(f"wrote {settings.out_dir / results['device']}.{{json,md,png}} "
               f"({results['wall_seconds']:.0f} s)")
        print(text)


def main(argv=None):
    settings = parse_settings(argv)
    if settings.render:
        return render(settings.render)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    keep_freed_memory()  # as the training CLIs do: mnist_common/allocator.py
    cache = fresh_compile_caches()
    latest = {}  # the last saved results, rendered if the run is interrupted
    try:
        measure_devices(settings, latest)
    except KeyboardInterrupt:
        if "results" in latest:
            write_reports(latest["results"], settings.out_dir)
            status(f"interrupted: partial results in {settings.out_dir}")
        raise SystemExit(130) from None
    finally:
        shutil.rmtree(cache, ignore_errors=True)

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
- end to end: one real MNIST epoch through the CLIs' loop (`mnist_common.loop`), per framework;
- with `--cli` (by default on a GPU): the training CLIs as fresh processes, 10 epochs each;
- with `--time-to-accuracy`: the same loop until test accuracy >= 98.5 %, its training seconds;
- peak host RSS, device memory, and beside every figure the share of the CPUs other processes took.

Results go to `<out-dir>/<device>.{json,md,png}`, written atomically once a device is complete
(`--quick`: a new scratch directory unless `--out-dir` is given); until then, and after a stop,
what was measured is in `<device>.partial.json` (`benchmarks.harness` says what may be
replaced). `run.py scaling` runs the training CLIs on 1 and N processes / devices. The numbers
say which machine made them; nothing here is typed in by hand.
"""

import argparse
import dataclasses
import datetime
import math
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from benchmarks import PROG, REPO, harness, training
from benchmarks.environment import find_devices
from benchmarks.report import markdown, scaling_markdown
from benchmarks.session import run_device
from benchmarks.timing import describe_error, status
from benchmarks.training import TARGET_ACCURACY
from benchmarks.variants import TUTORIAL, VARIANTS
from mnist_common.allocator import keep_freed_memory
from mnist_common.config import PRECISIONS, positive_int
from mnist_common.errors import ArgumentParser, UsageError
from mnist_common.fileio import say, write_text_atomic

RESULTS_DIR = REPO / "benchmarks" / "results"  # wherever it is run from
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
    out_dir: Path | None  # None: RESULTS_DIR, or with --quick a new scratch directory
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
                        help="where <device>.json, .md and .png go (default: "
                             f"{RESULTS_DIR.relative_to(REPO)}; --quick: a new scratch "
                             "directory, printed); files there that the benchmark did not write "
                             "are never replaced")
    parser.add_argument("--no-layers", dest="layers", action="store_false",
                        help="skip the per-layer timings")
    parser.add_argument("--no-epoch", dest="epoch", action="store_false",
                        help="skip the end-to-end MNIST epoch through the CLIs' loop")
    parser.add_argument("--cli", action=argparse.BooleanOptionalAction, default=None,
                        help="run the training CLIs as processes (python -m <framework>_impl."
                             "train, 10 epochs, --quick: 2 steps) and time them from outside "
                             "(default: on a GPU only; a CPU takes minutes)")
    parser.add_argument("--render", metavar="X.json",
                        help="measure nothing: write X.md (and X.png) beside a results JSON")
    parser.add_argument("--time-to-accuracy", action="store_true",
                        help=f"also train through the CLIs' loop (tutorial settings, up to "
                             f"{TUTORIAL.epochs} epochs) until {100 * TARGET_ACCURACY:.1f} %% "
                             "test accuracy; slow on a CPU")


def build_parser():
    parser = ArgumentParser(prog=PROG, description="Side-by-side speed of the tutorial MNIST "
                            "CNN in PyTorch and in Flax, timed on the engines the training CLIs "
                            "run.", epilog=f"{PROG} scaling --help: data-parallel scaling, the "
                            "training CLIs on 1 and N processes / devices")
    add_selection_flags(parser)
    add_timing_flags(parser)
    add_section_flags(parser)
    return parser


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
        out_dir=None if args.out_dir is None else Path(args.out_dir), render=args.render)


def parse_scaling(argv):
    parser = ArgumentParser(prog=f"{PROG} scaling", description=training.__doc__.split("\n\n")[0]
                            + " Writes scaling-<device>.json and .md.",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--devices", type=int_list, default=(1, 2), metavar="N,N,...",
                        help="process / device counts to run")
    parser.add_argument("--steps", type=positive_int, default=60, metavar="N",
                        help="training steps per run (batch 256)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where to train")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, metavar="DIR",
                        help="where scaling-<device>.json and .md go")
    return parser.parse_args(argv)


def fresh_compile_caches():
    """Point torch.compile's caches at a new temp dir, so first-call times are cold compiles."""
    cache = tempfile.mkdtemp(prefix="bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    return cache


def write_reports(json_path, results, text):
    """X.md, and X.png (no PNG without Matplotlib: `--render` it later), beside X.json."""
    if results["schema"] == harness.SCHEMA:
        from benchmarks.plot import plot

        try:
            plot(results, json_path.with_name(f"{json_path.stem}.png"))
        except ImportError as err:  # a bare GPU image may lack matplotlib
            status(f"no PNG ({describe_error(err)}); run `{PROG} --render {json_path}` where it is")
    write_text_atomic(json_path.with_name(f"{json_path.stem}.md"), text)


def render(json_path):
    """--render X.json: write X.md and X.png beside it (never a file the benchmark did not
    write); print the Markdown."""
    path = Path(json_path)
    results = harness.read_results(path)
    try:
        text = (markdown if results["schema"] == harness.SCHEMA else scaling_markdown)(results)
    except (TypeError, KeyError, IndexError, ValueError, AttributeError, StopIteration):
        raise UsageError(f"--render {json_path}: not a complete results file of this benchmark "
                         f"(a JSON object written by {PROG})") from None
    harness.refuse_strangers(path.parent, [f"{path.stem}.md", f"{path.stem}.png"], "--render")
    try:
        write_reports(path, results, text)
    except OSError as err:
        raise UsageError(f"--render {json_path}: cannot write its report beside it "
                         f"({err.strerror or err})") from None
    print(text)


def publish(out_dir, results, partial):
    """A device's complete results: <device>.json, .md and .png, then the partial file goes."""
    path = out_dir / f"{results['device']}.json"
    try:
        harness.refuse_strangers(out_dir, [path.name, f"{path.stem}.md", f"{path.stem}.png"])
    except UsageError as err:
        raise UsageError(f"{err}; the results are in {partial}") from None
    harness.write_json(path, results)
    text = markdown(results)
    write_reports(path, results, text)
    harness.discard(partial)
    status(f"wrote {out_dir / results['device']}.{{json,md,png}} ({results['wall_seconds']:.0f} s)")
    print(text)


def measure_devices(settings, devices, out_dir, partials):
    """Every device in turn, each finished figure in <device>.partial.json (listed in
    `partials` once written), the results published when the device is complete."""
    data_root, data_problem = None, "--no-epoch, no --time-to-accuracy, --no-cli"
    if settings.epoch or settings.time_to_accuracy or settings.cli is not False:
        data_root, data_problem = training.prepare_data(settings.quick)
    for device in devices:
        partial = out_dir / f"{device.slug()}.partial.json"

        def save(results, partial=partial):
            harness.write_json(partial, results)
            if partial not in partials:
                partials.append(partial)

        publish(out_dir, run_device(device, settings, data_root, data_problem, save), partial)


def run_benchmark(settings, partials):
    """Devices found, the out-dir checked (both before it is created), every device measured;
    a directory this run created and left empty is removed again."""
    keep_freed_memory()  # as the training CLIs do: mnist_common/allocator.py
    if settings.cli is not False and settings.devices != ("cpu",):
        training.keep_gpu_memory_free()  # before JAX starts on the GPU
    devices = find_devices(settings.devices[0], settings.precision)
    names = [name for device in devices for name in harness.output_names(device.slug())]
    if settings.out_dir is None and settings.quick:
        out_dir = harness.scratch_dir()
        created = [out_dir]
        status(f"--quick: writing the results to the scratch directory {out_dir}")
    else:
        out_dir = settings.out_dir or RESULTS_DIR
        created = harness.prepare_out_dir(out_dir, names)
    cache = fresh_compile_caches()
    try:
        measure_devices(settings, devices, out_dir, partials)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        harness.remove_if_empty(created)


def run_scaling(args, argv):
    """`run.py scaling`: the training CLIs on each count; scaling-<device>.json and .md."""
    stem = f"scaling-{args.device}"
    created = harness.prepare_out_dir(args.out_dir, [f"{stem}.json", f"{stem}.md"])
    try:
        rows = training.measure_scaling(args.device, args.steps, sorted(args.devices))
    finally:
        harness.remove_if_empty(created)
    results = {"schema": harness.SCALING_SCHEMA, "command": " ".join([PROG, "scaling", *argv]),
               "device": args.device, "steps": args.steps, "counts": sorted(args.devices),
               "rows": rows, "date": datetime.date.today().isoformat()}
    harness.write_json(args.out_dir / f"{stem}.json", results)
    text = scaling_markdown(results)
    write_text_atomic(args.out_dir / f"{stem}.md", text)
    print(text)


def stopped_line(signum, partials):
    """The one line a stopped run leaves: the signal, and where what it measured is."""
    name = signal.Signals(signum).name
    if not partials:
        return f"{PROG}: stopped by {name} before a figure was measured; nothing written"
    files = ", ".join(map(str, partials))
    return (f"{PROG}: stopped by {name}; what it measured is in {files} (`{PROG} --render "
            f"{partials[-1]}` makes its report); no complete result was replaced")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    scaling = argv[:1] == ["scaling"]
    args = parse_scaling(argv[1:]) if scaling else parse_settings(argv)
    if not scaling and args.render:
        return render(args.render)
    harness.handle_sigterm()
    partials = []
    try:
        return run_scaling(args, argv[1:]) if scaling else run_benchmark(args, partials)
    except BaseException as err:
        signum = harness.stop_signal(err)
        if signum is None:
            raise
        say(stopped_line(signum, partials))
        raise SystemExit(128 + signum) from None

"""Both frameworks from their own initial weights, over many seeds: is there a systematic gap?

    python -m parity_tests.seed_study [--seeds 20] [--steps 80] [--out FILE.json]

For each seed, each framework draws its own initial weights (`create_train_state`, as its CLI
does), trains `--steps` steps of batch 256 on that seed's batch order (the CLIs' order, the
in-memory loader) and is evaluated on all 10,000 test images. Prints each framework's mean and
standard deviation of test accuracy and the paired difference (torch - Flax, same seed, same
batches) with its 95 % t interval. A study, not a test: nothing here passes or fails.
"""

import itertools
import json
import math
import sys
import time

from mnist_common.config import positive_int
from mnist_common.errors import ArgumentParser, UsageError, run_cli
from mnist_common.ownership import check_out_file, write_owned

PROG = "python -m parity_tests.seed_study"
FRAMEWORKS = ("torch", "flax")


def t_quantile_975(df):
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (numerical integration
    of its density, then bisection)."""
    import numpy as np

    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    grid = np.linspace(0.0, 60.0, 600_001)
    density = np.exp(log_c - (df + 1) / 2 * np.log1p(grid**2 / df))
    cdf = 0.5 + np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    return float(np.interp(0.975, cdf, grid))


def summary(values):
    """(mean, sample standard deviation)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, sd


def run_seed(backend, placement, base, seed, steps, splits):
    """Test accuracy after `steps` steps from the framework's own seed-`seed` weights."""
    from mnist_common import loaders
    from mnist_common.config import Config
    from parity_tests.parity_helpers import train_batches

    own = backend.state_to_arrays(backend.create_train_state(Config(seed=seed), placement))[0]
    state = backend.state_from_arrays(base, own, {})  # the same module: no recompilation
    train, test = splits
    order = train_batches(train, seed=seed, epoch=0, batch_size=256)
    batches = [backend.place_batch(placement, x, y) for x, y in itertools.islice(order, steps)]
    state, _ = backend.train_steps(state, batches)
    test_batches = loaders.EngineBatches(backend, placement, test, train=False)
    return backend.evaluate(state, test_batches.every_example())["accuracy"]


def study(seeds, steps, progress=True):
    """{framework: [accuracy per seed]}."""
    from flax_impl import backend as flax_backend
    from mnist_common import data, reporting
    from mnist_common.config import Config
    from torch_impl import backend as torch_backend

    backends = {"torch": torch_backend, "flax": flax_backend}
    root = data.prepare_data(None, progress=progress)
    splits = data.load_arrays(root, train=True), data.load_arrays(root, train=False)
    if steps > math.ceil(len(splits[0][1]) / 256):
        raise UsageError(f"--steps {steps}: at most one epoch "
                         f"({math.ceil(len(splits[0][1]) / 256)} steps)")
    results = {name: [] for name in FRAMEWORKS}
    bar = reporting.progress_bar(None, total=seeds * len(FRAMEWORKS), desc="seed study",
                                 enabled=progress, leave=True)
    for name in FRAMEWORKS:
        backend = backends[name]
        placement = backend.select_placement("cpu")
        base = backend.create_train_state(Config(), placement)
        for seed in range(seeds):
            results[name].append(run_seed(backend, placement, base, seed, steps, splits))
            bar.update(1)
    bar.close()
    return results


def report(results, steps, seconds):
    """The lines printed: per framework mean +- sd, the paired gap and its 95 % interval."""
    n = len(results["torch"])
    lines = [f"{n} seeds, {steps} steps of batch 256 each, own initial weights "
             f"({seconds:.0f} s)"]
    for name in FRAMEWORKS:
        mean, sd = summary(results[name])
        lines.append(f"{name:5s}  test accuracy {100 * mean:.2f} +- {100 * sd:.2f} %")
    diffs = [a - b for a, b in zip(results["torch"], results["flax"], strict=True)]
    mean, sd = summary(diffs)
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    lines.append(f"torch - Flax (paired)  {100 * mean:+.2f} +- {100 * sd:.2f} points, 95 % "
                 f"interval {100 * (mean - half):+.2f} to {100 * (mean + half):+.2f}")
    return lines, {"seeds": n, "steps": steps, "batch_size": 256, "accuracy": results,
                   "paired_mean": mean, "paired_sd": sd,
                   "paired_95": [mean - half, mean + half], "seconds": seconds}


RECORD_KEYS = ("seeds", "steps", "batch_size", "accuracy", "paired_mean", "paired_sd",
               "paired_95", "seconds")


def main(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=positive_int, default=20, metavar="N",
                        help="seeds 0..N-1, each framework's own weights (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=80, metavar="N",
                        help="train steps of batch 256 per run, at most one epoch "
                             "(default: %(default)s)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="also write the accuracies and the summary as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        raise UsageError("--seeds must be at least 2 for a standard deviation")
    if args.out:  # before the study: its minutes must not end in a refusal
        check_out_file(args.out, "--out", "an earlier seed study's output")
    start = time.perf_counter()
    results = study(args.seeds, args.steps, args.progress and sys.stderr.isatty())
    lines, record = report(results, args.steps, time.perf_counter() - start)
    print("\n".join(lines))
    if args.out:
        check_out_file(args.out, "--out", "an earlier seed study's output")
        try:
            write_owned(args.out, json.dumps(record, indent=1) + "\n")
        except OSError as err:
            raise UsageError(f"--out {args.out}: cannot write it ({err.strerror})") from None


if __name__ == "__main__":
    run_cli(main, prog=PROG)

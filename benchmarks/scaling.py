"""Data-parallel scaling: training images/s on 1 vs N processes / devices, both frameworks.

    python benchmarks/scaling.py [--devices 1,2] [--steps 60] [--device cpu|gpu] [--out-dir DIR]

Each point is one real training run of the CLIs users run, on real MNIST at the tutorial's global
batch (256): `python -m torch_impl.train` (1) or `torchrun --standalone --nproc_per_node=N -m
torch_impl.train` (N, DistributedDataParallel), and `python -m flax_impl.train` with N devices
(on the CPU, N host devices from `--xla_force_host_platform_device_count=N`; on GPUs,
`CUDA_VISIBLE_DEVICES` = the first N). The figure is the run's own `train_images_per_second` over
`--steps` steps (the first epoch's compile included for Flax, as a user sees it; `--steps` long
enough makes it small). On a CPU, N "devices" share the same cores: the figure then shows the
cost of the split (communication, smaller GEMMs), not a speed-up.
Writes `scaling-<device>.json` and `.md` into `--out-dir` (default benchmarks/results).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnist_common.config import positive_int  # noqa: E402
from mnist_common.errors import ArgumentParser, UsageError, run_cli  # noqa: E402
from mnist_common.fileio import write_text_atomic  # noqa: E402

PROG = "benchmarks/scaling.py"


def count_list(text):
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every count must be at least 1, got {text!r}")
    return values


def build_parser():
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--devices", type=count_list, default=[1, 2], metavar="N,N,...",
                        help="process / device counts to run")
    parser.add_argument("--steps", type=positive_int, default=60, metavar="N",
                        help="training steps per run (batch 256)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="where to train")
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"), metavar="DIR",
                        help="where scaling-<device>.json and .md go")
    return parser


def _run(command, env):
    result = subprocess.run(command, cwd=REPO, env=env, text=True, capture_output=True,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UsageError(f"{' '.join(command[:6])} ... failed: {last}")


def measure(framework, count, args, scratch):
    out_dir = Path(scratch) / f"{framework}-{count}"
    flags = ["--max-steps", str(args.steps), "--no-progress", "--device", args.device,
             "--out-dir", str(out_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if framework == "torch":
        if count == 1:
            command = [sys.executable, "-m", "torch_impl.train", *flags]
        else:
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={count}", "-m", "torch_impl.train", *flags]
    else:
        if args.device == "cpu":
            env["XLA_FLAGS"] = (f"{env.get('XLA_FLAGS', '')} "
                                f"--xla_force_host_platform_device_count={count}").strip()
        else:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(count)))
        command = [sys.executable, "-m", "flax_impl.train", *flags]
    print(f"{PROG}: {framework} on {count} {'process' if framework == 'torch' else 'device'}"
          f"{'es' if framework == 'torch' and count > 1 else 's' if count > 1 else ''} ...",
          file=sys.stderr, flush=True)
    _run(command, env)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return {"framework": framework, "count": count, "device": metrics["device"],
            "steps": metrics["steps"], "train_seconds": metrics["train_seconds"],
            "images_per_second": metrics["train_images_per_second"],
            "final_loss": metrics["step_losses"][-1]}


def render(results):
    lines = [f"# Data-parallel scaling ({results['device']}), measured {results['date']}", "",
             f"`python {PROG} --device {results['device']} --steps {results['steps']} "
             f"--devices {','.join(map(str, results['counts']))}`: {results['steps']} steps at "
             "global batch 256 on real MNIST, the CLIs' own images/s.", "",
             "| framework | processes / devices | images/s | × one | last step's loss | device |",
             "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        one = next(r for r in results["rows"]
                   if r["framework"] == row["framework"] and r["count"] == results["counts"][0])
        lines.append(f"| {row['framework']} | {row['count']} | {row['images_per_second']:,.0f} | "
                     f"{row['images_per_second'] / one['images_per_second']:.2f} | "
                     f"{row['final_loss']:.4f} | {row['device']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = sorted(set(args.devices))
    with tempfile.TemporaryDirectory(prefix="scaling-") as scratch:
        rows = [measure(framework, count, args, scratch)
                for framework in ("torch", "flax") for count in counts]
    results = {"device": args.device, "steps": args.steps, "counts": counts, "rows": rows,
               "date": datetime.date.today().isoformat()}
    write_text_atomic(out_dir / f"scaling-{args.device}.json", json.dumps(results, indent=2))
    text = render(results)
    write_text_atomic(out_dir / f"scaling-{args.device}.md", text)
    print(text)


if __name__ == "__main__":
    run_cli(main, prog=PROG)

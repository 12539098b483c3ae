#!/usr/bin/env bash
# One benchmark session on a lent GPU machine (no network): at most about 11 minutes, typically 8.
#
# Run from anywhere inside the repository copy, with the MNIST raw files carried at
# data/MNIST/raw/ and $OUT set by the machine:   bash benchmarks/gpu_session.sh
# Everything goes under $OUT: log.txt (this whole session), results/<device>.{json,md,png}
# (GPU and CPU), results/tf32/<gpu>.{json,md,png} (--precision tf32, the CLIs included),
# results/compile/<gpu>.{json,md,png} (torch.compile vs eager on the GPU).
# Each part has its own time limit and the session goes on when one fails. A part stopped by
# its limit gets SIGTERM first: benchmarks/run.py then exits 143 and keeps every figure it
# measured in results/<device>.partial.json (render it with --render, like a complete one).
# The image may lack matplotlib; then render the PNGs at home:
#   python benchmarks/run.py --render results/<device>.json
set -u

: "${OUT:?set OUT to the directory whose contents come back}"
mkdir -p "$OUT/results"
exec > >(tee -a "$OUT/log.txt") 2>&1

cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # no network: no `pip install -e .`
export MNIST_DATA_DIR="${MNIST_DATA_DIR:-$PWD/data}"  # carried at data/MNIST/raw/
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"
SESSION_START=$SECONDS

# part NAME SECONDS COMMAND...: run with a time limit, log the exit status, never stop the session.
part() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "=== $name (limit ${limit} s, session at $((SECONDS - SESSION_START)) s): $*"
    timeout --signal=TERM --kill-after=20 "$limit" "$@"
    rc=$?
    echo "=== $name: exit status $rc after $((SECONDS - start)) s"
    return 0
}

part versions 30 "$PY" - <<'EOF'
import importlib.metadata as md, os, platform
for name in ("torch", "torchvision", "jax", "jaxlib", "flax", "optax", "numpy", "matplotlib",
             "safetensors", "tqdm", "triton"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} (not installed)")
print(platform.platform(), "python", platform.python_version(), "cpus", os.cpu_count())
import torch
print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import jax
print("jax devices", jax.devices())
EOF
part nvidia-smi 30 nvidia-smi
part gcc 10 sh -c 'command -v gcc cc g++ || echo "no C compiler: torch.compile will fail"'
part data 30 "$PY" -m mnist_common.data --data-dir "$MNIST_DATA_DIR" --no-progress

# 1. The GPU at --precision highest, everything but torch.compile and the CLIs, with time to
#    accuracy and the end-to-end epoch (about 2 minutes). Windows of 0.2 s hold hundreds of steps.
part gpu 180 "$PY" benchmarks/run.py --device gpu --precision highest --time-to-accuracy \
    --window-seconds 0.2 --no-cli \
    --variants torch-eager,torch-channels-last,flax-jit,flax-xla-defaults --out-dir "$OUT/results"

# 2. The same at --precision tf32 (TF32 convolutions and matmuls in both frameworks), without
#    the layers; with the CLIs as fresh processes, 10 epochs each at both precisions (--cli;
#    about 2 minutes of the part's 4).
part gpu-tf32 240 "$PY" benchmarks/run.py --device gpu --precision tf32 --window-seconds 0.2 \
    --variants torch-eager,torch-channels-last,flax-jit --no-layers --cli \
    --out-dir "$OUT/results/tf32"

# 3. torch.compile on the GPU beside torch eager (its ratio base), on its own: six cold compiles
#    can take minutes, and a stop here loses nothing measured in parts 1 and 2.
part gpu-compile 120 "$PY" benchmarks/run.py --device gpu --window-seconds 0.2 \
    --variants torch-eager,torch-compile --no-epoch --no-layers --no-cli \
    --out-dir "$OUT/results/compile"

# 4. The host CPU (16 cores), without torch.compile, the end-to-end epoch and the CLIs (the
#    2-core reference run has them); the GPU is hidden from both frameworks.
part cpu 90 env CUDA_VISIBLE_DEVICES= JAX_PLATFORMS=cpu "$PY" benchmarks/run.py --device cpu \
    --variants torch-eager,torch-channels-last,flax-jit,flax-xla-defaults --no-epoch --no-cli \
    --window-seconds 0.25 --out-dir "$OUT/results"

ls -l "$OUT/results"
echo "=== session done in $((SECONDS - SESSION_START)) s"

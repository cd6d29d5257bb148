#!/usr/bin/env bash
# One prepared job for a GPU machine (see benchmarks/gpu_suite.py): train resnet18 on
# Fashion-MNIST at 28x28, profile, solve, quantize, evaluate; JSON results in OUT_DIR.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [FASHION_MNIST_DIR] [WHEEL_DIR]
#
# FASHION_MNIST_DIR holds the four *-ubyte.gz files (default: the Debian package's path).
# WHEEL_DIR holds wheels to install first when the machine lacks them (PuLP, for one), with no
# network: they go to a private site folder put first on PYTHONPATH.
set -euo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR [FASHION_MNIST_DIR] [WHEEL_DIR]}
data=${2:-/usr/share/datasets/fashion-mnist}
wheels=${3:-}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
if [ -n "$wheels" ]; then
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$here:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt" || true
time python3 "$here/benchmarks/gpu_suite.py" --out "$out" --data-dir "$data" 2>&1 | tee "$out/gpu_suite.log"

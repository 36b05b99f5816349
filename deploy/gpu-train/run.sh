#!/usr/bin/env bash
# On the GPU machine, from the repository's root, with build/camvid-pack.tar carried along:
#   deploy/gpu-train/run.sh BUDGET_SECONDS [train-kit run options...]
# trains everything inside BUDGET_SECONDS and leaves summary.json, enet-camvid.pth and run-*.tar in
# $OUT (the device tool's folder) or in build/gpu-train. README.md, "Training on a GPU", says what next.
set -euo pipefail
cd "$(dirname "$0")/../.."
budget=${1:?usage: deploy/gpu-train/run.sh BUDGET_SECONDS [train-kit run options]}
shift
out=${OUT:-build/gpu-train}
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
echo "== $(date -u +%FT%TZ) $(uname -n): $($python -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
# the DataLoader workers pass batches through shared memory: a small /dev/shm kills them (then: --workers 0)
df -h /dev/shm 2>/dev/null | tail -n 1 || true
# the runs' own directories stay outside $OUT: only the chosen runs come back, as tars (8 files at most)
exec "$python" deploy/gpu-train/kit.py run --pack build/camvid-pack.tar --out "$out" --work /tmp/enet-serve-kit \
    --budget "$budget" "$@"

#!/usr/bin/env bash
# The GPU check on the lent machine (see README.md beside this file): call once per bundle that
# prepare.sh made, carrying `.gpucheck/bundle-K`. Each call stashes its bundle on the warm machine
# (.gpucheck-stash/, git-ignored, kept between calls); the call that completes the set joins the
# onnxruntime-gpu wheel, checks its sha256, installs it and the service's wheels into /tmp/site
# (shadowing the machine's onnxruntime CPU build), and runs `enet-serve bench gpu` into $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
STASH=.gpucheck-stash
SITE=/tmp/site
OUT=${OUT:-$PWD/.gpucheck-out}
BUDGET_S=${BUDGET_S:-360}   # the check's own limit: with the machine's start and the bundles' calls, inside a 15-minute visit
mkdir -p "$STASH" "$OUT"

shopt -s nullglob
for bundle in .gpucheck/bundle-*; do
  cp -r "$bundle"/. "$STASH"/
  echo "stashed $bundle: $(ls "$bundle" | tr '\n' ' ')"
done
[ -f "$STASH/manifest.json" ] || { echo "no bundle carried: run with carry=['.gpucheck/bundle-K']" >&2; exit 2; }

missing=$(python3 - "$STASH" <<'PY'
import json, sys
from pathlib import Path
stash = Path(sys.argv[1]); m = json.loads((stash / "manifest.json").read_text())
need = [f"part-{i + 1:02d}" for i in range(m["parts"])] + [f"deps/{d}" for d in m["deps"]] + [f"frames/{f}" for f in m["frames"]]
print(" ".join(n for n in need if not (stash / n).is_file()))
PY
)
if [ -n "$missing" ]; then
  echo "waiting for more bundles; still missing: $missing"
  exit 0
fi

if [ ! -f "$SITE/.installed" ]; then
  wheel=$(python3 -c "import json; print(json.load(open('$STASH/manifest.json'))['wheel'])")
  mkdir -p /tmp/wheels && cat "$STASH"/part-* > "/tmp/wheels/$wheel"
  python3 - "$STASH/manifest.json" "/tmp/wheels/$wheel" <<'PY'
import hashlib, json, sys
want = json.load(open(sys.argv[1]))["sha256"]
got = hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest()
sys.exit(0 if got == want else f"{sys.argv[2]}: sha256 {got}, the manifest says {want}")
PY
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "/tmp/wheels/$wheel" "$STASH"/deps/*.whl
  # onnxruntime's preload_dlls() looks for CUDA and cuDNN in nvidia/ beside its own package: point that
  # at the machine's nvidia-*-cu13 wheels (PyTorch's), which the provider library carries no RUNPATH to
  nvidia=$(python3 -P -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia
  if [ -d "$nvidia" ]; then ln -sfn "$nvidia" "$SITE/nvidia"; else echo "no $nvidia: CUDA may not load" >&2; fi
  touch "$SITE/.installed"
fi
# PYTHONSAFEPATH: `python3 -m enet_serve` from the checkout must import the installed wheel, not the
# checkout's enet_serve/ folder (which lacks the mapped sub-packages)
export PYTHONPATH=$SITE PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 PATH=$SITE/bin:$PATH
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import onnxruntime as o, enet_serve.bench.gpu as g; print('onnxruntime', o.__version__, o.__file__, o.get_available_providers()); print('enet_serve', g.__file__)"
set -o pipefail
timeout "$BUDGET_S" python3 -m enet_serve bench gpu --repository "$PWD/model_repository" --data "$STASH/frames" \
  --out "$OUT" --cache-dir /tmp/enet-trt-cache "$@" 2>&1 | tee "$OUT/gpu-check.log"

#!/usr/bin/env bash
# Prepare the GPU check (`enet-serve bench gpu`) for a machine without network: Python 3.12, PyTorch's
# CUDA 13 wheels (nvidia-*-cu13, which onnxruntime-gpu's CUDA provider loads), onnxruntime CPU. Run it
# here, in the repository root, on a machine that reaches PyPI:
#
#   bash deploy/gpu-check/prepare.sh            # writes .gpucheck/bundle-1 ... bundle-N (git-ignored)
#
# Each bundle stays under the device tool's 64 MiB per call (with the working tree): the onnxruntime-gpu
# wheel (about 255 MB) split into parts, the service's wheels for Python 3.12 (the enet-serve wheel and
# the dependencies the device lacks), 16 CamVid val frames. Then one `run` call per bundle, back to back
# (deploy/gpu-check/README.md): each stashes its bundle on the warm machine; the one that completes the
# set installs everything and runs the check.
set -euo pipefail
cd "$(dirname "$0")/../.."

ORT_GPU_VERSION=${ORT_GPU_VERSION:-1.31.1}
FRAMES=${FRAMES:-16}
CAMVID_VAL=${CAMVID_VAL:-../shared/datasets/camvid/val}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=.gpucheck
WORK=$OUT/work
PLATFORMS=(--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# The device's own Python has these (KINDS.md, "Python packages already there"): their wheels would
# only take space (opencv alone is 60 MB).
ON_DEVICE='^(numpy|pillow|torch|nvidia_.*|sympy|protobuf|packaging|flatbuffers|mpmath|opencv_python_headless|uvloop|pyyaml|prometheus_client|anyio|click|h11|idna|typing_extensions|annotated_doc|certifi|httpcore|httpx|markupsafe|jinja2|pygments|rich|markdown_it_py|mdurl|shellingham|typer|werkzeug|wrapt)-'

# Each call carries one bundle beside the working tree, under 64 MiB together.
tree_mib=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
tree_mib=$(( tree_mib / 1048576 + 1 ))
BUNDLE_MIB=${BUNDLE_MIB:-$(( 63 - tree_mib ))}  # a bundle
PART_MIB=${PART_MIB:-$(( BUNDLE_MIB - 1 ))}     # a part of the onnxruntime-gpu wheel (a manifest rides with it)
if (( tree_mib + BUNDLE_MIB > 63 || PART_MIB >= BUNDLE_MIB )); then
  echo "the working tree is ${tree_mib} MiB: BUNDLE_MIB=$BUNDLE_MIB and PART_MIB=$PART_MIB do not fit a 64 MiB call" >&2; exit 1
fi

rm -rf "$OUT" && mkdir -p "$WORK/wheels" "$WORK/deps" "$WORK/frames"

echo "== onnxruntime-gpu $ORT_GPU_VERSION for CPython 3.12 (about 255 MB)"
if [ -n "${ORT_GPU_WHEEL:-}" ]; then  # a wheel downloaded before
  cp "$ORT_GPU_WHEEL" "$WORK/wheels/"
else
  $PYTHON -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$WORK/wheels" "onnxruntime-gpu==$ORT_GPU_VERSION"
fi

echo "== enet-serve and the serving dependencies for CPython 3.12"
$PYTHON -m pip wheel -q --no-deps -w "$WORK/deps" .
$PYTHON - > "$WORK/requirements.txt" <<'PY'
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PY
$PYTHON -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d "$WORK/deps" -r "$WORK/requirements.txt"
find "$WORK/deps" -name '*.whl' -printf '%f\n' | grep -Ei "$ON_DEVICE" | sed "s|^|$WORK/deps/|" | xargs -r rm -f

echo "== $FRAMES CamVid val frames from $CAMVID_VAL"
ls "$CAMVID_VAL"/*.png | sort | head -n "$FRAMES" | xargs -I{} cp {} "$WORK/frames/"

echo "== bundles"
$PYTHON - "$WORK" "$OUT" "$PART_MIB" "$BUNDLE_MIB" <<'PY'
import hashlib, json, shutil, sys
from pathlib import Path

work, out, part_mib, bundle_mib = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
wheel = next((work / "wheels").glob("onnxruntime_gpu-*.whl"))
data = wheel.read_bytes()
size = part_mib << 20
parts = [data[i:i + size] for i in range(0, len(data), size)]
extras = [p for d in ("deps", "frames") for p in sorted((work / d).iterdir())]
extras_bytes = sum(p.stat().st_size for p in extras)
manifest = {"wheel": wheel.name, "sha256": hashlib.sha256(data).hexdigest(), "parts": len(parts),
            "deps": sorted(p.name for p in (work / "deps").iterdir()),
            "frames": sorted(p.name for p in (work / "frames").iterdir())}
# Every part in its own bundle; the wheels and frames ride with the smallest part that leaves room.
room = [(bundle_mib << 20) - len(p) for p in parts]
host = max(range(len(parts)), key=lambda i: room[i])
if room[host] < extras_bytes:
    host = len(parts)  # a bundle of their own
bundles = len(parts) + (host == len(parts))
for b in range(bundles):
    d = out / f"bundle-{b + 1}"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if b < len(parts):
        (d / f"part-{b + 1:02d}").write_bytes(parts[b])
    if b == host:
        for p in extras:
            target = d / p.parent.name
            target.mkdir(exist_ok=True)
            shutil.copy(p, target / p.name)
    total = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    print(f"{d}: {total / 2**20:.1f} MiB")
    if total > bundle_mib << 20:
        sys.exit(f"{d}: {total / 2**20:.1f} MiB, over the {bundle_mib} MiB a call can carry beside the tree")
print(f"{wheel.name}: {len(data) / 2**20:.1f} MiB in {len(parts)} parts; sha256 {manifest['sha256'][:16]}...")
PY
rm -rf "$WORK"
grep -qxF '/.gpucheck/' .gitignore 2>/dev/null || echo "note: add /.gpucheck/ to .gitignore (or .git/info/exclude) before calling run"
n=$(ls -d $OUT/bundle-* | wc -l)
echo "ready: $n device calls, back to back (each within the machine's 30 s warm window):"
for i in $(seq 1 "$n"); do
  echo "  run(command='bash deploy/gpu-check/run.sh', carry=['.gpucheck/bundle-$i'], timeout_s=$([ "$i" = "$n" ] && echo 420 || echo 120))"
done

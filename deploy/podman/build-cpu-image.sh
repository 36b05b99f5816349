#!/usr/bin/env bash
# Build the CPU image with podman where no Docker engine runs and no registry can be reached
# (README "The container image"): a base made locally from Debian's packages, the Python wheels
# from a local wheelhouse, and buildah's chroot isolation. Run as root from the repository root:
#   bash deploy/podman/build-cpu-image.sh            # -> localhost/enet-serve:cpu
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${BASE:-localhost/enet-serve-base:bookworm}
IMAGE=${IMAGE:-localhost/enet-serve:cpu}
WORK=${WORK:-/var/tmp/enet-serve-image}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK"

# 1. The base: Debian bookworm (minbase) with Python 3.11 as `python`, like python:3.11-slim.
if ! podman image exists "$BASE"; then
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$WORK/rootfs" "$MIRROR"
  rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
  tar -C "$WORK/rootfs" -c . | podman import --change 'CMD ["python"]' - "$BASE"
fi

# 2. The wheelhouse: the serving dependencies of pyproject.toml with the CPU runtime extra (the
#    Dockerfile's VARIANT=cpu), and what building the package needs.
"$PYTHON" -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['cpu']))" > "$WORK/requirements.txt"
"$PYTHON" -m pip download -q -d "$WORK/wheels" -r "$WORK/requirements.txt" "setuptools>=77" wheel pip

# 3. The image: the repository's Dockerfile, its RUN steps in a chroot (docker format: OCI drops HEALTHCHECK).
podman build --isolation=chroot --format docker \
  --volume "$WORK/wheels:/wheels:ro" --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels \
  --build-arg PYTHON_IMAGE="$BASE" --build-arg VARIANT=cpu -t "$IMAGE" .
podman image ls "$IMAGE"

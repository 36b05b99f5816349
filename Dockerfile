# enet-serve: the serving image (onnxruntime + FastAPI; no torch), CPU or GPU from this one file.
#
#   docker build -t enet-serve .                                          # VARIANT=cpu: onnxruntime
#   docker run --rm -p 8000:8000 enet-serve
#
#   docker build --build-arg VARIANT=gpu -t enet-serve:gpu .              # onnxruntime-gpu + CUDA + cuDNN wheels
#   docker build --build-arg VARIANT=gpu --build-arg TENSORRT=auto -t enet-serve:gpu-trt .   # + TensorRT's libraries
#   docker run --rm --gpus all -p 8000:8000 -v enet-trt:/var/cache/enet-serve enet-serve:gpu-trt
#
# Both variants start from the same python:3.11-slim: the GPU one takes CUDA and cuDNN from
# onnxruntime-gpu's [cuda,cudnn] extras (nvidia-* wheels, loaded by onnxruntime.preload_dlls()), so the
# host needs only the NVIDIA driver and the container toolkit (`--gpus`). TENSORRT=auto installs the
# TensorRT major that onnxruntime-gpu's TensorRT provider links against (TENSORRT=10 names one; none:
# CUDA only). GET /models reports the provider, precision and fallbacks actually in use.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG TENSORRT=none
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Where PyPI cannot be reached: a local wheelhouse mounted at build time (deploy/podman/build-cpu-image.sh),
#   --volume "$PWD/wheels:/wheels:ro" --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels
# (build arguments are environment variables of the RUN steps, and never reach the final image).
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (their layer survives code changes): pyproject's base dependencies and the
# variant's runtime extra (cpu: onnxruntime; gpu: onnxruntime-gpu[cuda,cudnn]), never both.
COPY pyproject.toml ./
RUN case "$VARIANT" in cpu|gpu) ;; *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1 ;; esac \
 && python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies'][sys.argv[1]]))" "$VARIANT" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
# TensorRT's pip libraries, pinned to the major version the installed onnxruntime-gpu was built against
# (read from its provider libraries by service/providers.py, which runs on the standard library alone).
COPY service/providers.py /tmp/providers.py
RUN if [ "$TENSORRT" != none ]; then \
      if [ "$VARIANT" != gpu ]; then echo "TENSORRT=$TENSORRT needs VARIANT=gpu" >&2; exit 1; fi; \
      python /tmp/providers.py tensorrt-requirement "$TENSORRT" > /tmp/tensorrt.txt \
      && cat /tmp/tensorrt.txt && pip install -r /tmp/tensorrt.txt; \
    fi
# Then the code: the one `enet_serve` package, whose sub-packages are the repository's folders
# (pyproject's package-dir). Only the serving dependencies are installed: export, training and
# bench are present but never imported by `enet-serve serve`.
COPY README.md ./
COPY enet_serve/ enet_serve/
COPY service/ service/
COPY models/ models/
COPY export/ export/
COPY training/ training/
COPY bench/ bench/
RUN pip install --no-deps .
# Check the installed package, from / : inside /src Python would import the source tree's enet_serve/.
WORKDIR /
RUN python -c "import enet_serve, enet_serve.service.app, enet_serve.cli, onnxruntime; \
assert enet_serve.__file__.startswith('/opt/venv/'), enet_serve.__file__; \
print('enet-serve', enet_serve.__file__, 'onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENET_SERVE_REPOSITORY=/models \
    ENET_SERVE_HOST=0.0.0.0 \
    ENET_SERVE_PORT=8000 \
    ENET_SERVE_TRT_CACHE_DIR=/var/cache/enet-serve/trt \
    XDG_CACHE_HOME=/var/cache/enet-serve
COPY --from=build /opt/venv /opt/venv
COPY model_repository/ /models/
RUN useradd --system --uid 10001 --no-create-home enet \
 && mkdir -p /var/cache/enet-serve && chown enet /var/cache/enet-serve
USER 10001
WORKDIR /tmp
EXPOSE 8000
# Ready once every model is loaded and warm, on the port the server reads (ENET_SERVE_PORT: set it, not
# --port, to move the server); a first TensorRT engine build takes minutes (cached on
# the volume at /var/cache/enet-serve afterwards), hence the long start period.
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('ENET_SERVE_PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/health/ready', timeout=2).status != 200)"]
ENTRYPOINT ["enet-serve", "serve"]

# enet-serve: the serving image (onnxruntime + FastAPI; no torch).
#
#   docker build -t enet-serve .
#   docker run --rm -p 8000:8000 enet-serve
#   docker run --rm -p 8000:8000 -e ENET_SERVE_API_KEYS=secret -e ENET_SERVE_MAX_BATCH_SIZE=4 enet-serve
#
# GPU (CUDA / TensorRT execution providers): build on a CUDA + cuDNN runtime image that has Python 3.10+
# and install onnxruntime-gpu instead of onnxruntime, e.g.
#   docker build --build-arg BASE_IMAGE=<cuda-cudnn-python image> --build-arg ORT_PACKAGE=onnxruntime-gpu -t enet-serve:gpu .
#   docker run --gpus all -p 8000:8000 -v trt-cache:/var/cache/enet-serve enet-serve:gpu
# GET /models then reports the provider and precision actually in use.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG ORT_PACKAGE=onnxruntime
# Where PyPI cannot be reached: a local wheelhouse mounted at build time (deploy/podman/build-cpu-image.sh),
#   --volume "$PWD/wheels:/wheels:ro" --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels
# (build arguments are environment variables of the RUN steps, and never reach the final image).
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (their layer survives code changes): the [project] dependencies of pyproject.toml.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt
RUN if [ "$ORT_PACKAGE" != "onnxruntime" ]; then sed -i "s/^onnxruntime\b/$ORT_PACKAGE/" /tmp/requirements.txt; fi \
 && pip install -r /tmp/requirements.txt
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
# (checked from / : in /src the source folder enet_serve/, without its mapped sub-packages, would shadow it)
RUN pip install --no-deps . && cd / && python -c "import enet_serve.service.app, enet_serve.cli"

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENET_SERVE_REPOSITORY=/models \
    ENET_SERVE_HOST=0.0.0.0 \
    ENET_SERVE_PORT=8000 \
    ENET_SERVE_TRT_CACHE_DIR=/var/cache/enet-serve/trt
COPY --from=build /opt/venv /opt/venv
COPY model_repository/ /models/
RUN useradd --system --uid 10001 --no-create-home enet \
 && mkdir -p /var/cache/enet-serve && chown enet /var/cache/enet-serve
USER 10001
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status != 200)"
ENTRYPOINT ["enet-serve", "serve"]

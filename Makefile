# Set-up on a fresh machine is two commands: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8000
HOST ?= 0.0.0.0
BIN := $(VENV)/bin
# torch for the export/train/test extras: this exact version is a local CPU wheel on the project's
# machines; elsewhere set TORCH_INDEX to a CPU wheel index to avoid a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# The onnxruntime build: cpu (onnxruntime) or gpu (onnxruntime-gpu with CUDA and cuDNN from its wheels).
# Exclusive: both write the same `onnxruntime/` package, so switching removes the other first.
RUNTIME ?= cpu
ifeq ($(filter $(RUNTIME),cpu gpu),)
$(error RUNTIME must be cpu or gpu, not '$(RUNTIME)')
endif
OTHER_RUNTIME := $(if $(filter gpu,$(RUNTIME)),cpu,gpu)
ORT_PACKAGES := onnxruntime onnxruntime-gpu

.PHONY: serve test install dev data export-shipped bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The serving install: the RUNTIME's onnxruntime, FastAPI, ... never torch.
$(VENV)/.installed-serve-$(RUNTIME): pyproject.toml | $(BIN)/python
	-$(BIN)/pip uninstall -q -y $(ORT_PACKAGES) 2>/dev/null
	$(BIN)/pip install -q -e '.[$(RUNTIME)]'
	rm -f $(VENV)/.installed-*-$(OTHER_RUNTIME)
	touch $@

# Tests, export and training: torch (the CPU wheel first), onnx, pytest. The dev extra brings the CPU
# runtime (export's checks run on it); RUNTIME=gpu swaps it for onnxruntime-gpu afterwards.
$(VENV)/.installed-dev-$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[dev]'
ifeq ($(RUNTIME),gpu)
	$(BIN)/pip uninstall -q -y $(ORT_PACKAGES)
	$(BIN)/pip install -q -e '.[gpu]'
endif
	rm -f $(VENV)/.installed-*-$(OTHER_RUNTIME)
	touch $@ $(VENV)/.installed-serve-$(RUNTIME)

install: $(VENV)/.installed-serve-$(RUNTIME)
dev: $(VENV)/.installed-dev-$(RUNTIME)

serve: $(VENV)/.installed-serve-$(RUNTIME)
	$(BIN)/enet-serve serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-dev-$(RUNTIME) data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Fashion-MNIST from Debian's package (the CamVid data is in ../shared/datasets/camvid).
data:
	@test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
	    echo "note: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); its tests will be skipped"; }

# Re-export the shipped, trained models into model_repository/ from models/weights/.
export-shipped: $(VENV)/.installed-dev-$(RUNTIME)
	$(BIN)/enet-serve export enet --name enet-camvid --weights models/weights/enet-camvid.pth --precision fp32,fp16,int8
	$(BIN)/enet-serve export lenet5 --name lenet5-fashion --weights models/weights/lenet5-fashion.pth --precision fp32,fp16,int8

bench: $(VENV)/.installed-dev-$(RUNTIME)
	$(BIN)/enet-serve bench runtime model_repository/enet-camvid
	$(BIN)/enet-serve bench load

clean:
	rm -rf $(VENV) .pytest_cache

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

.PHONY: serve test install dev data export-shipped bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The serving install: onnxruntime, FastAPI, ... never torch.
$(VENV)/.installed-serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Tests, export and training: torch (the CPU wheel first), onnx, pytest.
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-serve

install: $(VENV)/.installed-serve
dev: $(VENV)/.installed-dev

serve: $(VENV)/.installed-serve
	$(BIN)/enet-serve serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-dev data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Fashion-MNIST from Debian's package (the CamVid data is in ../shared/datasets/camvid).
data:
	@test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
	    echo "note: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); its tests will be skipped"; }

# Re-export the shipped, trained models into model_repository/ from models/weights/.
export-shipped: $(VENV)/.installed-dev
	$(BIN)/enet-serve export enet --name enet-camvid --weights models/weights/enet-camvid.pth --precision fp32,fp16,int8
	$(BIN)/enet-serve export lenet5 --name lenet5-fashion --weights models/weights/lenet5-fashion.pth --precision fp32,fp16,int8

bench: $(VENV)/.installed-dev
	$(BIN)/enet-serve bench runtime model_repository/enet-camvid
	$(BIN)/enet-serve bench load

clean:
	rm -rf $(VENV) .pytest_cache

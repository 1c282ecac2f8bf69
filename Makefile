# cifar_dist: `make run` sets up and trains the default job, `make test` runs lint and every test.
# Variables (override on the command line, e.g. `make run DATA=path/to/cifar-10-python.tar.gz`):
PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
# Torch wheels: this project's machines serve torch 2.14.1 / torchvision 0.29.1 from local disk.
TORCH    ?= torch==2.14.1 torchvision==0.29.1
SHARED_JPEG := ../shared/data/cifar10-jpeg.tar.gz
# Data source: the shared real CIFAR-10 when it is beside the repo, else the official download.
DATA     ?= $(if $(wildcard $(SHARED_JPEG)),$(SHARED_JPEG),cifar10)
DATA_DIR ?= data
DATA_NAME ?= cifar10
# One GPU when nvidia-smi sees one, else two gloo processes on the CPU.
LAUNCH   ?= $(if $(shell nvidia-smi -L 2>/dev/null),1gpu,cpu)
# The default job: the `fast` preset on a GPU; on a CPU a small seed recipe cut to minutes.
PRESET   ?= $(if $(filter cpu,$(LAUNCH)),seed003_simple_cnn,fast)
# launch/multi_gpu.yaml holds no process count: one process per GPU torch sees (CUDA_VISIBLE_DEVICES honoured).
NPROC    ?= $(if $(filter multi_gpu,$(LAUNCH)),$(shell $(BIN)/python -c 'import torch; print(torch.cuda.device_count())'),)
RUN_ARGS ?= $(if $(filter cpu,$(LAUNCH)),--run.epochs=2,)
PYTEST_ARGS ?=
# `make test` runs the suite in two pytest-xdist workers (most tests wait on trainer, launcher and SLURM
# processes); `make test XDIST=` runs it in one process.
XDIST    ?= -n 2 --dist loadgroup

APT_FFCV  := pkg-config g++ libturbojpeg0-dev libopencv-dev libgl1
APT_SLURM := slurmctld slurmd slurm-client munge

.PHONY: setup sysdeps test-sysdeps data run test test-fast lint bench clean

setup: sysdeps $(VENV)/.installed

# FFCV builds against libturbojpeg and OpenCV. Installed only when missing (idempotent).
sysdeps:
	@bash scripts/apt-ensure.sh $(APT_FFCV)

# The SLURM tests start a real one-node cluster: they need its daemons and munge.
test-sysdeps:
	@bash scripts/apt-ensure.sh $(APT_SLURM)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

data: setup
	$(BIN)/cifar-dist prepare $(DATA) --out $(DATA_DIR) --name $(DATA_NAME)

run: data
	$(BIN)/accelerate launch --config_file launch/$(LAUNCH).yaml $(if $(NPROC),--num_processes=$(NPROC)) -m cifar_dist.train \
		--preset=$(PRESET) --data.dir=$(DATA_DIR) --data.name=$(DATA_NAME) --resume=auto $(RUN_ARGS)

# ruff, then the layer rules of pyproject.toml's [tool.importlinter] contracts.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: setup test-sysdeps lint
	$(BIN)/pytest $(XDIST) $(PYTEST_ARGS)

# Everything but the slow real-data and multi-process tests.
test-fast: setup lint
	$(BIN)/pytest -m 'not slow and not slurm' $(PYTEST_ARGS)

bench: setup data
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

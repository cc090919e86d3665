# Two entry points for a fresh machine: `make demo` (main job, CPU, embedded corpus) and `make test`.
# On a GPU box that already has a CUDA torch, `make USE_SYSTEM_TORCH=1 ...` builds the venv on top
# of the system site-packages and installs no torch of its own.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
USE_SYSTEM_TORCH ?= 0
PYTEST_ARGS ?=
DEMO_DIR ?= demo_run

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

ifeq ($(USE_SYSTEM_TORCH),1)
VENV_FLAGS := --system-site-packages
TORCH_INSTALL := @echo "reusing system torch: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"
else
VENV_FLAGS :=
TORCH_INSTALL := $(BIN)/pip install -q "$(TORCH_SPEC)"
endif

.PHONY: venv test demo lint clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(TORCH_INSTALL)
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/lit-golf demo --out $(DEMO_DIR)

lint: $(STAMP)
	$(BIN)/ruff check lit_golf tests bench

clean:
	rm -rf $(VENV) $(DEMO_DIR) logs

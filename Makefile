# Set-up is part of every target: a fresh machine needs nothing but python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: demo test check-kernels bench clean

$(STAMP): pyproject.toml
ifeq ($(HAS_CUDA),1)
	# CUDA machine: reuse the user's torch (and its matching triton) from the base interpreter.
	$(PY) -m venv --system-site-packages $(VENV)
else
	# No CUDA: the CPU build of torch; a plain `torch` requirement would pull a multi-GB CUDA wheel.
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
endif
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(BIN)/python -m trikern.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

check-kernels: $(STAMP)
	$(BIN)/trikern check-kernels

clean:
	rm -rf $(VENV) build *.egg-info

# Set-up is part of every target: a fresh machine needs nothing but python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: demo test check-kernels bench serve clean

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

# A short prompt-set bench of the embedded model (every mode, block 8, 32 tokens, 8 prompts); `trikern
# bench --help` for the full set, --json / --csv / --plot, --peer hf and --synthetic.
bench: $(STAMP)
	$(BIN)/trikern bench --limit 8 --block-sizes 8 --max-new-tokens 32

# The OpenAI-compatible server on 127.0.0.1:8000 (the serve extra comes with .[test]); e.g.
# make serve SERVE_ARGS="--model path/to/checkpoint --mode spec-quadratic".
serve: $(STAMP)
	$(BIN)/trikern serve $(SERVE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

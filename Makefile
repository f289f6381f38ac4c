# The two commands a newcomer needs: `make demo` and `make test`. Both start from a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install bench clean tools

$(BIN)/slimops: pyproject.toml infra/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU wheel; anything else may pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# The constraints are the resolved set: without them pip backtracks for many minutes (sagemaker's s3fs).
	$(BIN)/pip install -q -e '.[test]' -c infra/constraints.txt
	touch $(BIN)/slimops

install: $(BIN)/slimops

# Compress the packaged all-MiniLM-L6-v2 with the example recipe; print the gate verdict and the report path.
demo: install
	$(BIN)/slimops run examples/minilm-sts.yaml --out runs/minilm-sts

test: install
	$(BIN)/python -m pytest -q

# Side-by-side benchmark (PyTorch fp32, ORT fp32, Optimum default, slimops best); rewrites BENCHMARKS.md.
bench: install
	$(BIN)/python benchmarks/quantize_minilm.py --write BENCHMARKS.md
	$(BIN)/python benchmarks/profile_ops.py --write BENCHMARKS.md

# checkov (terraform security scan) pins libraries the SDK extras conflict with: it gets its own venv.
TOOLS ?= .venv-tools
tools: $(TOOLS)/bin/checkov

$(TOOLS)/bin/checkov:
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q checkov

clean:
	rm -rf runs .pytest_cache

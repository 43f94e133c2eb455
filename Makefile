# Two commands from a fresh clone: `make test` (the test suite) and `make demo` (build + serve the demo assistant).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-fast demo bench soak clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

demo:
	@bash scripts/demo.sh  # runs scripts/setup.sh itself, to time it

bench: setup
	$(PY) bench/train_throughput.py && $(PY) bench/rag_latency.py && $(PY) bench/serve_throughput.py

# 16 clients for 5 minutes against a real `protege serve`; prints the figures and PASS/FAIL (bench/soak.py)
soak: setup
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

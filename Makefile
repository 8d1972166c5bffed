# Override TORCH_SPEC on a GPU machine, e.g. `make test TORCH_SPEC="torch"`.
PYTHON      ?= python3
TORCH_SPEC  ?= torch==2.13.0
VENV        ?= .venv
PY          := $(VENV)/bin/python
PORT        ?= 8501
CKPT        ?=
HOST        ?= 127.0.0.1
ALLOW_ROOT  ?=

.PHONY: install test explore bench clean browser-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Chromium + chromedriver (Debian packages) for tests/test_browser.py; apt-get only when missing.
browser-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  elif [ -n "$$CI" ]; then echo "browser-deps: need root (or sudo) to apt-get install chromium chromium-driver" >&2; exit 1; \
	  else echo "browser-deps: not root; skipping chromium (tests/test_browser.py will skip)"; exit 0; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; \
	fi

test: install browser-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# HOST=0.0.0.0 shares the explorer with whoever can reach PORT; ALLOW_ROOT=DIR opens checkpoints under DIR too.
explore: install
	$(VENV)/bin/streamlit run app/explorer.py --server.address $(HOST) --server.port $(PORT) --server.headless true \
	  --browser.gatherUsageStats false -- $(if $(CKPT),--ckpt $(CKPT),) $(foreach r,$(ALLOW_ROOT),--allow-root $(r))

clean:
	rm -rf $(VENV) .pytest_cache

# Override TORCH_SPEC on a GPU machine, e.g. `make test TORCH_SPEC="torch"`.
PYTHON      ?= python3
TORCH_SPEC  ?= torch==2.13.0
VENV        ?= .venv
PY          := $(VENV)/bin/python
PORT        ?= 8501
CKPT        ?=

.PHONY: install test explore bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

explore: install
	$(VENV)/bin/streamlit run app/explorer.py --server.port $(PORT) --server.headless true -- $(if $(CKPT),--ckpt $(CKPT),)

clean:
	rm -rf $(VENV) .pytest_cache

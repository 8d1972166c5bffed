# Override TORCH_SPEC on a GPU machine, e.g. `make test TORCH_SPEC="torch"`.
PYTHON      ?= python3
TORCH_SPEC  ?= torch==2.13.0
VENV        ?= .venv
PY          := $(VENV)/bin/python
PORT        ?= 8501
CKPT        ?=
HOST        ?= 127.0.0.1
ALLOW_ROOT  ?=

.PHONY: install test explore bench clean browser-deps test-tl3 test-clients

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

# The equivalence tests run twice: as this CPU computes, then on scalar ATen kernels and MKL's
# generic code path (one thread), i.e. other reduction orders, so a tolerance that only holds
# for one CPU fails here rather than on a user's machine. Compile-heavy tests run once.
EQUIVALENCE_ENV ?= OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE

test: install browser-deps test-tl3
	$(PY) -m pytest $(PYTEST_ARGS)
	$(EQUIVALENCE_ENV) $(PY) -m pytest -m equivalence -k "not compile and not gradcheck and not inductor and not bench" $(PYTEST_ARGS)

# HOST=0.0.0.0 shares the explorer with whoever can reach PORT; ALLOW_ROOT=DIR opens checkpoints under DIR too.
explore: install
	$(VENV)/bin/streamlit run app/explorer.py --server.address $(HOST) --server.port $(PORT) --server.headless true \
	  --browser.gatherUsageStats false -- $(if $(CKPT),--ckpt $(CKPT),) $(foreach r,$(ALLOW_ROOT),--allow-root $(r))

# transformer-lens 3.x (what SAELens needs) beside the default 4.x: .venv-tl3 sees the default venv's
# packages through a .pth line and holds only transformer-lens 3 itself, so it builds in seconds.
# test-tl3 runs every test that touches TransformerLens there (make test runs it first).
TL3_VENV  ?= .venv-tl3
TL3_SPEC  ?= transformer-lens>=3.3,<4
TL3_TESTS ?= tests/test_tl_compat.py tests/test_tl_bridge.py tests/test_export_tl.py tests/test_patching.py \
             tests/test_attribution.py tests/test_cache.py tests/test_model.py tests/test_fast_path.py \
             tests/test_forward_kwargs.py

$(TL3_VENV)/.installed: $(VENV)/.installed
	rm -rf $(TL3_VENV)
	$(PYTHON) -m venv $(TL3_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
	  > "$$($(TL3_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_default_venv.pth"
	$(TL3_VENV)/bin/python -m pip install -q "$(TL3_SPEC)"
	$(TL3_VENV)/bin/python -c "import transformer_lens as tl, importlib.metadata as m; \
	  v = m.version('transformer-lens'); assert v.startswith('3.'), v; print('transformer-lens', v, 'in $(TL3_VENV)')"
	touch $@

test-tl3: $(TL3_VENV)/.installed
	$(TL3_VENV)/bin/python -m pytest -p no:cacheprovider $(TL3_TESTS)

# Peer libraries in their own venvs (scripts/make_client_venvs.sh): SAELens, nnsight, pyvene,
# CircuitsVis, circuit-tracer; each client's tests run with its venv's python.
CLIENTS ?= saelens nnsight pyvene circuitsvis circuit-tracer
test-clients: install
	TORCH_SPEC="$(TORCH_SPEC)" PYTHON="$(PYTHON)" scripts/make_client_venvs.sh $(CLIENTS)
	@status=0; for c in $(CLIENTS); do \
	  py=.venv-clients/$$c/bin/python; [ -x $$py ] || py=$(PY); \
	  echo "== $$c ($$py)"; $$py -m pytest -p no:cacheprovider -rs tests/clients/test_client_$$(echo $$c | tr - _).py || status=1; \
	done; exit $$status

clean:
	rm -rf $(VENV) $(TL3_VENV) .venv-clients .pytest_cache

#!/usr/bin/env bash
# Peer libraries whose pins clash with .venv, each in its own virtualenv under .venv-clients/
# (the `clients` test group, e.g. tests/test_features_io.py, finds them there; point elsewhere
# with SAELENS_PYTHON=...). Usage: scripts/make_client_venvs.sh [DIR]   (default .venv-clients)
set -euo pipefail
DIR="${1:-.venv-clients}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"  # the CPU build where a local wheel/index provides it

# --- SAELens (sae-lens 6.x pins transformer-lens < 4, which cannot share .venv) -----------
if [ ! -x "$DIR/saelens/bin/python" ]; then
  "$PY" -m venv "$DIR/saelens"
  "$DIR/saelens/bin/pip" install -q --upgrade pip
  "$DIR/saelens/bin/pip" install -q "$TORCH_SPEC"
  "$DIR/saelens/bin/pip" install -q "sae-lens>=6,<7"
fi
"$DIR/saelens/bin/python" -c "import sae_lens; print('sae-lens', sae_lens.__version__, 'in $DIR/saelens')"

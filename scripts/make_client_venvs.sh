#!/usr/bin/env bash
# Peer libraries whose pins clash with .venv, each in its own virtualenv under .venv-clients/
# (the `clients` test group, `make test-clients`, finds them there; tests/test_features_io.py
# can be pointed elsewhere with SAELENS_PYTHON=...).
#
#   scripts/make_client_venvs.sh [DIR] [CLIENT...]   # default DIR .venv-clients, every client
#
# Each venv holds torch ($TORCH_SPEC), the toolkit (editable, with its dev extra) and the
# client, resolved by pip in one install: a venv that builds is the proof that
# `pip install interp-toolkit CLIENT` resolves. A client whose pins cannot meet the toolkit's
# gets DIR/NAME.blocked (pip's resolver message) instead of a venv; its test reads the file
# and says which pin blocks it. One section per client below; add one as a `client_NAME`
# function plus its name in ALL.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.venv-clients
if [ $# -gt 0 ] && [[ "$1" == */* || "$1" == .* ]]; then DIR=$1; shift; fi
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"  # the CPU build where a local wheel/index provides it
ALL=(saelens nnsight pyvene circuitsvis circuit-tracer)
mkdir -p "$DIR"

# make_venv NAME REQUIREMENT... : fresh venv, torch, then toolkit + REQUIREMENT in one resolve.
# Rebuilt only when pyproject.toml is newer than the venv.
make_venv() {
  local name=$1; shift
  local venv="$DIR/$name"
  if [ -f "$venv/.installed" ] && [ "$venv/.installed" -nt pyproject.toml ]; then
    echo "[$name] up to date: $venv"; return 0
  fi
  rm -rf "$venv" "$DIR/$name.blocked"
  echo "[$name] building $venv"
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "$TORCH_SPEC"
  if ! "$venv/bin/pip" install -q -e ".[dev]" "$@" 2> "$DIR/$name.pip.log"; then
    grep -v "^WARNING: Location" "$DIR/$name.pip.log" > "$DIR/$name.blocked" || true
    # pip's message often names no pin; keep the client's own requirements so the test can say which
    rm -rf "$DIR/$name.dl" && "$venv/bin/pip" download -q --no-deps -d "$DIR/$name.dl" "$@" 2>/dev/null || true
    for w in "$DIR/$name.dl"/*.whl; do
      [ -f "$w" ] && "$venv/bin/python" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
print(z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode())" "$w" \
        | grep "^Requires-Dist:" > "$DIR/$name.requires" || true
    done
    rm -rf "$venv" "$DIR/$name.dl"
    echo "[$name] BLOCKED: pip cannot install the toolkit together with $*; see $DIR/$name.blocked"
    return 0
  fi
  "$venv/bin/pip" freeze > "$venv/freeze.txt"
  touch "$venv/.installed"
  echo "[$name] ready: $(grep -i -E '^(transformer.lens|transformers|sae.lens|nnsight|pyvene|circuitsvis|circuit.tracer)==' "$venv/freeze.txt" | tr '\n' ' ')"
}

# --- SAELens (sae-lens 6.x pins transformer-lens < 4, which cannot share .venv) -----------
# tests/test_features_io.py (SAELens's own save/load) and tests/clients/test_saelens.py
# (SAELens's runner training an SAE on a shipped checkpoint) both use it.
client_saelens()        { make_venv saelens "sae-lens>=6,<7"; }
# --- nnsight: traces our model, reads every hook, intervenes -------------------------------
client_nnsight()        { make_venv nnsight "nnsight>=0.5"; }
# --- pyvene: interventions on our hook points, compared with interp.patching ----------------
client_pyvene()         { make_venv pyvene "pyvene>=0.1.8"; }
# --- CircuitsVis: renders one of our attention patterns -------------------------------------
client_circuitsvis()    { make_venv circuitsvis "circuitsvis>=1.43"; }
# --- circuit-tracer 0.5 pins transformers <= 4.57.3; the toolkit needs 5.x -------------------
client_circuit-tracer() { make_venv circuit-tracer "circuit-tracer>=0.5"; }

for c in "${@:-${ALL[@]}}"; do "client_$c"; done

#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install ModelForge for Jupyter with its test and convert extras, editable.
# Idempotent: re-running only installs what changed. silero-vad is installed with --no-deps: we need its ONNX file,
# not the torch it would pull in.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is needed ($PY is $("$PY" -V))" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,convert]'
.venv/bin/python -m pip install -q --no-deps silero-vad

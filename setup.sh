#!/usr/bin/env bash
# Set-up on a fresh machine (Python 3.11, CPU): a virtualenv in .venv with the pinned packages.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt

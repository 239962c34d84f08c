#!/usr/bin/env bash
# Set-up on a fresh machine (Python 3.11, CPU): a virtualenv in .venv with the pinned packages.
#   bash setup.sh         what training, sampling and evaluation need (requirements.txt)
#   bash setup.sh test    and what the tests and benchmarks need (requirements-test.txt)
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-}" in
  "") requirements=requirements.txt ;;
  test) requirements=requirements-test.txt ;;
  *) echo "usage: bash setup.sh [test]  (unknown argument: $1)" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"

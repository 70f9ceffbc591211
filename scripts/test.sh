#!/usr/bin/env bash
# Set up the virtual environment (if missing) and run the test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/nanochat" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  # torch is pinned to the CPU wheel (torch==2.13.0); an unpinned torch pulls a multi-GB CUDA build
  "$VENV/bin/pip" install --quiet -e '.[test]'
fi
exec "$VENV/bin/python" -m pytest "$@"

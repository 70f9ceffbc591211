#!/usr/bin/env bash
# Set up the virtual environment (if missing) and run the test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
VENV="$VENV" bash scripts/setup_venv.sh test
exec "$VENV/bin/python" -m pytest "$@"

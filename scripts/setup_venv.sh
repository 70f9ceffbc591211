#!/usr/bin/env bash
# Make sure the virtual environment has what a command needs; install only what is missing.
# Usage: bash scripts/setup_venv.sh run|test     (VENV, default .venv)
#   run:  the package and its runtime dependencies (validate_e2e.sh)
#   test: the same plus the test extras (scripts/test.sh)
# Both scripts call this, so they work on a fresh clone in either order: the check is for the
# modules each one imports, not for the `nanochat` entry point (which both installs create).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
case "${1:-}" in
  run) extra=""; mods="nanochat_ternary, torch, numpy, safetensors, tokenizers, gguf, fastapi, uvicorn" ;;
  test) extra="[test]"; mods="nanochat_ternary, torch, numpy, safetensors, tokenizers, gguf, fastapi, uvicorn, pytest, openai, httpx, selenium" ;;
  *) echo "usage: setup_venv.sh run|test" >&2; exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
fi
if ! "$VENV/bin/python" -c "import $mods" 2>/dev/null || [ ! -x "$VENV/bin/nanochat" ]; then
  echo "setup: installing nanochat-ternary$extra into $VENV"
  # torch is pinned to the CPU wheel (torch==2.13.0); an unpinned torch pulls a multi-GB CUDA build
  "$VENV/bin/pip" install --quiet -e ".$extra"
fi

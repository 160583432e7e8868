#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# The web app's browser test (tests/server/test_serve_browser.py) drives the system's Chromium through Playwright;
# it comes from the system's package manager, never as a browser build downloaded by the tests.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "facechain tests: installing chromium (system package) for the browser test"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "facechain tests: no chromium and no apt-get: install Chromium with your package manager" >&2
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DIFFUSERS_OFFLINE=1
# the lint (pyproject's [tool.ruff]) first: it takes a second
ruff check facechain tests benchmarks scripts run_inference.py
python -m pytest -q "$@"

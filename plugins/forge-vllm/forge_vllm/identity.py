"""How a vLLM served model name maps to forge's registry key."""

from __future__ import annotations

from forge_core.backend import ModelIdentity


def derive_identity(served_name: str) -> ModelIdentity:
    """The wire name is the served name verbatim; the key is its last path segment.

    vLLM serves the ``--model`` argument as the model name unless ``--served-model-name`` is
    given, so local paths and hub repos show up as names: ``/models/Qwen3-8B-AWQ`` gets the key
    ``Qwen3-8B-AWQ``, ``Qwen/Qwen3-0.6B`` gets ``Qwen3-0.6B``, ``default`` stays ``default``.
    Used both for ``--model`` and for names adopted from ``/v1/models``.
    """
    segments = [part for part in served_name.strip().split("/") if part]
    key = segments[-1] if segments else served_name
    return ModelIdentity(wire_name=served_name, key=key)

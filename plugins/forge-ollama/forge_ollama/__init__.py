"""forge backend plugin for Ollama's native API (distribution ``forge-proxy-ollama``)."""

from forge_ollama.client import OllamaClient, ollama_identity
from forge_ollama.translate import (
    OllamaStreamNormalizer,
    from_ollama_response,
    to_ollama_request,
)

__all__ = [
    "OllamaClient",
    "OllamaStreamNormalizer",
    "from_ollama_response",
    "ollama_identity",
    "to_ollama_request",
]

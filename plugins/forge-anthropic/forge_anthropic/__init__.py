"""forge backend plugin: the Anthropic Messages API (or a server speaking it) as the backend."""

from forge_anthropic.client import AnthropicClient

__all__ = ["AnthropicClient"]

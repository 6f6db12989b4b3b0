"""forge: a plugin-based proxy that makes tool calling with self-hosted LLMs reliable."""

__version__ = "0.1.0"

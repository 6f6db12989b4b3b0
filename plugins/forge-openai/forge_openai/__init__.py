"""forge backend plugin for any OpenAI-compatible chat-completions endpoint."""

__version__ = "0.1.0"

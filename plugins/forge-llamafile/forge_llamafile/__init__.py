"""forge backend plugin for llama.cpp's llama-server and llamafile."""

__version__ = "0.1.0"

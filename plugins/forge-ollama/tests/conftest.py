"""Test set-up for the Ollama plugin: importable from a source checkout, plus shared fixtures.

When forge-proxy-core and forge-proxy-ollama are installed, nothing is added to ``sys.path``;
in a bare checkout the repository root and the plugin directory are used instead.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
for module, root in (("forge_core", HERE.parents[2]), ("forge_ollama", HERE.parent)):
    if importlib.util.find_spec(module) is None:
        sys.path.insert(0, str(root))
if str(HERE) not in sys.path:  # fake_ollama, also under --import-mode=importlib
    sys.path.insert(0, str(HERE))

from fake_ollama import FakeOllama  # noqa: E402
from forge_ollama.client import OllamaClient  # noqa: E402

from forge_core.backend import BackendSettings  # noqa: E402


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama()


@pytest.fixture
def make_client(fake: FakeOllama) -> Callable[..., OllamaClient]:
    """Build an OllamaClient wired to ``fake``: ``make_client(model=..., url=..., **options)``."""

    def build(
        model: str | None = None, url: str | None = None, timeout: float = 30.0, **options: Any
    ) -> OllamaClient:
        settings = BackendSettings(backend_url=url, model=model, timeout=timeout, options=options)
        return OllamaClient(settings, transport=fake.transport())

    return build

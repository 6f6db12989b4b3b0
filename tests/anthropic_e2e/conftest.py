"""Fixtures of the Anthropic end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from anthropic_e2e_support import Forge, run_forge


@pytest.fixture(scope="module")
def shared_forge() -> Iterator[Forge]:
    with run_forge() as running:
        yield running


@pytest.fixture
def forge(shared_forge: Forge) -> Forge:
    """forge with default settings in front of a scripted backend, with a clean record."""
    backend = shared_forge.backend
    backend.replies.clear()
    backend.requests.clear()
    backend.raw_requests.clear()
    backend.headers.clear()
    return shared_forge

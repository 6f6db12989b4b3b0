"""The recorded fixtures keep Ollama's exact byte form (see tests/fixtures/ollama/README.md)."""

from __future__ import annotations

import json

import pytest
from fake_ollama import FIXTURES, fixture_bytes, go_json

NDJSON = sorted(p.name for p in FIXTURES.glob("*.ndjson"))
JSON = sorted(p.name for p in FIXTURES.glob("*.json"))


def test_every_fixture_is_named_in_the_readme() -> None:
    readme = (FIXTURES / "README.md").read_text()
    missing = [name for name in NDJSON + JSON if f"`{name}`" not in readme]
    assert missing == []


@pytest.mark.parametrize("name", NDJSON)
def test_ndjson_fixtures_are_one_go_encoded_object_per_line(name: str) -> None:
    data = fixture_bytes(name)
    assert data.endswith(b"\n") and b"\n\n" not in data
    for line in data.splitlines():
        assert go_json(json.loads(line)) == line


@pytest.mark.parametrize("name", JSON)
def test_json_fixtures_are_go_encoded_without_trailing_newline(name: str) -> None:
    data = fixture_bytes(name)
    assert not data.endswith(b"\n")
    assert go_json(json.loads(data)) == data


def test_go_escapes_are_present_where_the_text_has_them() -> None:
    data = fixture_bytes("chat_stream_text_and_call.ndjson")
    assert b"\\u0026" in data and b"\\u003c24h\\u003e" in data
    assert "Zürich".encode() in data  # non-ASCII is raw UTF-8, not \u escaped

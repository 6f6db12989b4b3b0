"""Issue 15 items 1 and 5: a client's tool schema can neither make forge fetch or read
anything ($ref) nor stall the event loop (backtracking regexes, exponential $ref chains)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from schema_support import anthropic_body, ask, openai_body, recording_server, stalling_server

from forge_core.testing import ScriptedBackend, reply_text, reply_tool_call

PROTOCOLS = ["openai", "anthropic"]
SECRET = "SECRET-FILE-CONTENT-4Kq8Zt"


def body_for(protocol: str, schema: Any) -> dict[str, Any]:
    make = openai_body if protocol == "openai" else anthropic_body
    return make("probe", schema, tool_choice=_required(protocol))


def _required(protocol: str) -> Any:
    return "required" if protocol == "openai" else {"type": "any"}


def ref_schemas(base: str) -> dict[str, Any]:
    """A remote ``$ref`` at the root, nested in a property, and relative to ``$id``."""
    return {
        "root": {"$ref": f"{base}/root.json"},
        "nested": {"type": "object", "properties": {"x": {"$ref": f"{base}/nested.json"}}},
        "id-relative": {
            "$id": f"{base}/dir/base.json",
            "type": "object",
            "properties": {"x": {"$ref": "other.json"}},
        },
        "credentials": {
            "type": "object",
            "properties": {"x": {"$ref": base.replace("://", "://user:pw-9Xq@") + "/c.json"}},
        },
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("where", ["root", "nested", "id-relative", "credentials"])
async def test_remote_ref_is_never_fetched_and_the_schema_is_not_enforced(
    protocol: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    with recording_server() as (base, hits):
        schema = ref_schemas(base)[where]
        # Against the remote schema ({"type": "integer"}) this call would be wrong.
        backend = ScriptedBackend().push(reply_tool_call("probe", {"x": "text"}))
        status, text, calls = await ask(backend, protocol, body_for(protocol, schema))
    assert hits == []
    assert status == 200, text
    assert calls == [{"name": "probe", "arguments": {"x": "text"}}]
    assert len(backend.requests) == 1  # not enforced: no corrective retry
    assert "pw-9Xq" not in caplog.text
    assert any("never fetched" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("nested", [False, True])
async def test_file_ref_is_never_read(protocol: str, nested: bool, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.json"
    secret_file.write_text(json.dumps({"enum": [SECRET]}))
    ref = {"$ref": secret_file.as_uri()}
    schema = {"type": "object", "properties": {"x": ref}} if nested else ref
    backend = ScriptedBackend().push(
        reply_tool_call("probe", {"x": "other"}), reply_tool_call("probe", {"x": "other"})
    )
    status, text, _ = await ask(backend, protocol, body_for(protocol, schema))
    assert status == 200
    assert SECRET not in text
    assert SECRET not in json.dumps(backend.requests)  # nor in a corrective retry
    assert len(backend.requests) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_hanging_ref_url_neither_stalls_nor_delays(protocol: str) -> None:
    with stalling_server(hold=2.5) as (base, accepted):
        schema = {"type": "object", "properties": {"x": {"$ref": f"{base}/slow.json"}}}
        backend = ScriptedBackend().push(reply_tool_call("probe", {"x": 1}))
        status, _, calls = await ask(backend, protocol, body_for(protocol, schema), watch=True)
    assert accepted == []
    assert status == 200 and calls == [{"name": "probe", "arguments": {"x": 1}}]


async def test_refs_inside_the_schema_still_resolve_and_are_enforced() -> None:
    schema = {
        "$id": "https://example.test/tool.json",
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/count"},
            "b": {"$ref": "https://example.test/tool.json#/$defs/count"},
            "c": {"$ref": "#word"},
        },
        "$defs": {"count": {"type": "integer"}, "word": {"$anchor": "word", "type": "string"}},
    }
    backend = ScriptedBackend().push(
        reply_tool_call("probe", {"a": "x", "b": 1, "c": 2}),
        reply_tool_call("probe", {"a": 1, "b": 2, "c": "w"}),
    )
    status, _, calls = await ask(backend, "openai", body_for("openai", schema))
    assert status == 200 and calls == [{"name": "probe", "arguments": {"a": 1, "b": 2, "c": "w"}}]
    retry = json.dumps(backend.requests[1]["messages"])
    assert "argument 'a' must be of type integer" in retry
    assert "argument 'c' must be of type string" in retry


# --- ReDoS -------------------------------------------------------------------------------------

EVIL = "^(a+)+$"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("size", [22, 30])  # 22 already blocks stock `re` for about a second
async def test_backtracking_pattern_is_enforced_without_stalling(protocol: str, size: int) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": EVIL}}}
    backend = ScriptedBackend().push(
        reply_tool_call("probe", {"x": "a" * size + "!"}), reply_tool_call("probe", {"x": "aaa"})
    )
    status, _, calls = await ask(
        backend, protocol, body_for(protocol, schema), watch=True
    )
    assert status == 200 and calls == [{"name": "probe", "arguments": {"x": "aaa"}}]
    assert "must match the pattern" in json.dumps(backend.requests[1]["messages"])


async def test_backtracking_pattern_properties_key_does_not_stall() -> None:
    schema = {
        "type": "object",
        "patternProperties": {EVIL: {"type": "integer"}},
        "additionalProperties": False,
    }
    backend = ScriptedBackend().push(
        reply_tool_call("probe", {"a" * 26 + "!": 1}), reply_tool_call("probe", {"aaaa": 1})
    )
    status, _, calls = await ask(
        backend, "openai", body_for("openai", schema), watch=True
    )
    assert status == 200 and calls == [{"name": "probe", "arguments": {"aaaa": 1}}]
    assert "unexpected argument" in json.dumps(backend.requests[1]["messages"])


async def test_pattern_re2_cannot_run_is_not_enforced() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": r"^(?=.*\d)"}}}
    backend = ScriptedBackend().push(reply_tool_call("probe", {"x": "no digits"}))
    status, _, calls = await ask(backend, "openai", body_for("openai", schema))
    assert status == 200 and calls == [{"name": "probe", "arguments": {"x": "no digits"}}]
    assert len(backend.requests) == 1


async def test_ecma_unicode_escapes_in_patterns_work() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": r"^\u00e9+$"}}}
    backend = ScriptedBackend().push(
        reply_tool_call("probe", {"x": "e"}), reply_tool_call("probe", {"x": "\u00e9\u00e9"})
    )
    status, _, calls = await ask(backend, "openai", body_for("openai", schema))
    assert status == 200 and calls == [{"name": "probe", "arguments": {"x": "\u00e9\u00e9"}}]


# --- schemas that cost too much ----------------------------------------------------------------


async def test_exponential_ref_chain_is_bounded_off_the_loop() -> None:
    defs: dict[str, Any] = {"d0": {"type": "object"}}
    for level in range(1, 40):  # 2**39 checks if expanded
        below = {"$ref": f"#/$defs/d{level - 1}"}
        defs[f"d{level}"] = {"allOf": [below, below]}
    schema = {"$defs": defs, "$ref": "#/$defs/d39"}
    backend = ScriptedBackend().push(reply_tool_call("probe", {}), reply_text("unused"))
    status, _, calls = await ask(
        backend, "openai", body_for("openai", schema), watch=True
    )
    assert status == 200 and calls == [{"name": "probe", "arguments": {}}]


async def test_deeply_nested_schema_does_not_stall() -> None:
    schema: dict[str, Any] = {"type": "integer"}
    arguments: Any = 1
    for _ in range(55):  # as deep as a request body may nest (128 levels, wire/jsonio.py)
        schema = {"type": "object", "properties": {"a": schema}}
        arguments = {"a": arguments}
    backend = ScriptedBackend().push(reply_tool_call("probe", arguments))
    status, _, calls = await ask(
        backend, "openai", body_for("openai", schema), watch=True
    )
    assert status == 200 and len(calls) == 1

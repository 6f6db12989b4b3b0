"""The compact call grammar, checked by matching: the GBNF is translated to a Python regex
(the test schemas have no recursive rules), so "admits" and "refuses" are real behaviour."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from forge_llamafile.constrain import constrained_body, tool_notes, with_tool_notes
from forge_llamafile.grammar import ARRAY_CAP, call_grammar

TOKEN = re.compile(
    r'\s+|"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[A-Za-z0-9-]+|\{\d+(?:,\d*)?\}|[()|*+?]'
)


def to_regex(grammar: str) -> re.Pattern[str]:
    rules = {}
    for line in grammar.strip().splitlines():
        name, body = line.split(" ::= ", 1)
        rules[name] = body

    def expand(name: str, depth: int = 0) -> str:
        assert depth < 40, "recursive grammar: not expressible as a regex"
        out = []
        for token in TOKEN.findall(rules[name]):
            if token.isspace():
                continue
            if token.startswith('"'):
                out.append(re.escape(json.loads(token)))
            elif token.startswith("[") or token in "()|*+?" or token.startswith("{"):
                out.append("(?:" if token == "(" else token)
            else:
                out.append("(?:" + expand(token, depth + 1) + ")")
        return "".join(out)

    return re.compile(expand("root"))


def tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


WEATHER = tool("get_weather", {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city"],
})
EMAIL = tool("send_email", {
    "type": "object",
    "properties": {
        "to": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "urgent": {"type": "boolean"},
        "when": {"type": "object", "properties": {"date": {"type": "string"}},
                 "required": ["date"]},
    },
    "required": ["to"],
})


def admits(grammar: str, text: str) -> bool:
    return to_regex(grammar).fullmatch(text) is not None


@pytest.mark.parametrize("text", [
    '{"name":"get_weather","arguments":{"city":"Paris"}}',
    '{"name":"get_weather","arguments":{"city":"Paris","unit":"celsius"}}',
    '{"name":"get_weather","arguments":{"city":"São \\"Paulo\\"","days":-3}}',
    '{"name":"get_weather","arguments":{"city":"Oslo","unit":"fahrenheit","days":0}}',
])
def test_grammar_admits_compact_valid_calls(text: str) -> None:
    assert admits(call_grammar([WEATHER]) or "", text)


@pytest.mark.parametrize("text", [
    '{\n  "name": "get_weather",\n  "arguments": {"city": "Paris"}\n}',  # free whitespace
    '{"name":"get_weather","arguments":{}}',  # a required argument missing
    '{"name":"get_weather","arguments":{"city":""}}',  # minLength
    '{"name":"get_weather","arguments":{"city":"Paris","unit":"kelvin"}}',  # enum
    '{"name":"get_weather","arguments":{"unit":"celsius","city":"Paris"}}',  # schema order
    '{"name":"get_weather","arguments":{"city":"Paris","days":1.5}}',  # integer
    '{"name":"get_weather","arguments":{"city":"Paris","town":"x"}}',  # undeclared
    '{"name":"web_search","arguments":{"city":"Paris"}}',  # another tool
])
def test_grammar_refuses_whitespace_and_invalid_calls(text: str) -> None:
    assert not admits(call_grammar([WEATHER]) or "", text)


def test_several_tools_are_alternatives_with_nested_objects_and_arrays() -> None:
    grammar = call_grammar([WEATHER, EMAIL]) or ""
    assert admits(grammar, '{"name":"get_weather","arguments":{"city":"Rome"}}')
    assert admits(grammar, '{"name":"send_email","arguments":{"to":["a@x.org","b@x.org"],'
                           '"urgent":true,"when":{"date":"2025-01-02"}}}')
    assert admits(grammar, '{"name":"send_email","arguments":{"to":["a@x.org"],"when":'
                           '{"date":"d"}}}')
    assert not admits(grammar, '{"name":"send_email","arguments":{"to":[]}}')  # minItems
    assert not admits(grammar, '{"name":"send_email","arguments":{"to":["a"],"when":{}}}')


def test_arrays_without_max_items_are_capped() -> None:
    items = ",".join(['"a"'] * ARRAY_CAP)
    grammar = call_grammar([EMAIL]) or ""
    assert admits(grammar, f'{{"name":"send_email","arguments":{{"to":[{items}]}}}}')
    assert not admits(grammar, f'{{"name":"send_email","arguments":{{"to":[{items},"a"]}}}}')


def test_all_optional_properties_allow_any_subset_in_order() -> None:
    grammar = call_grammar([tool("t", {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}}})]) or ""
    for args in ("{}", '{"a":1}', '{"b":2}', '{"c":3}', '{"a":1,"c":3}', '{"a":1,"b":2,"c":3}'):
        assert admits(grammar, f'{{"name":"t","arguments":{args}}}'), args
    assert not admits(grammar, '{"name":"t","arguments":{,"b":2}}')
    assert not admits(grammar, '{"name":"t","arguments":{"c":3,"a":1}}')


def test_unsupported_schemas_get_no_grammar() -> None:
    assert call_grammar([tool("t", {"$ref": "#/$defs/x", "$defs": {"x": {}}})]) is None
    assert call_grammar([tool("t", {"allOf": [{"type": "object"}]})]) is None
    assert call_grammar([]) is None


def test_grammar_body_drops_tools_and_describes_them() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER, EMAIL],
            "tool_choice": "required", "max_tokens": 10}
    out = constrained_body(body, None, "grammar-avoid")
    assert "tools" not in out and "tool_choice" not in out and "response_format" not in out
    assert not admits(out["grammar"], '{"name":"get_weather","arguments":{"city":"city"}}')
    assert constrained_body(body, None, "grammar")["grammar"] == call_grammar(
        [WEATHER, EMAIL]
    )
    system = out["messages"][0]
    assert system["role"] == "system" and "get_weather" in system["content"]
    assert "- unit (string, optional) one of \"celsius\", \"fahrenheit\"" in system["content"]
    assert out["messages"][1:] == body["messages"] and body["tools"] == [WEATHER, EMAIL]


def test_a_schema_the_grammar_cannot_express_falls_back_to_json_schema() -> None:
    ref = tool("t", {"$ref": "#/$defs/x", "$defs": {"x": {"type": "object"}}})
    out = constrained_body({"messages": [], "tools": [ref]}, ref, "grammar")
    assert "grammar" not in out and out["response_format"]["type"] == "json_schema"


def test_schema_variants() -> None:
    body = {"messages": [], "tools": [WEATHER], "tool_choice": "required"}
    plain = constrained_body(body, WEATHER, "schema")
    assert "tools" not in plain and "tool_choice" not in plain
    schema = plain["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["name"] == {"const": "get_weather"}
    kept = constrained_body(body, WEATHER, "schema-tools")
    assert kept["tools"] == [WEATHER] and "tool_choice" not in kept
    assert constrained_body({"messages": []}, None, "grammar") == {"messages": []}


def test_tool_notes_join_an_existing_system_message() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}]
    out = with_tool_notes(messages, [WEATHER])
    assert out[0]["content"].startswith("Be brief.\n\n# Tools") and out[1:] == messages[1:]
    assert messages[0]["content"] == "Be brief."
    assert "city (string, required)" in tool_notes([WEATHER])


def test_small_integer_ranges_are_enforced_and_naturals_have_no_sign() -> None:
    days = tool("f", {"type": "object", "properties": {
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "top": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
        "count": {"type": "integer", "minimum": 0},
    }, "required": ["days"]})
    grammar = call_grammar([days]) or ""
    for n in range(1, 8):
        assert admits(grammar, f'{{"name":"f","arguments":{{"days":{n}}}}}')
    for bad in ("0", "8", "10", "-1"):
        assert not admits(grammar, f'{{"name":"f","arguments":{{"days":{bad}}}}}'), bad
    assert admits(grammar, '{"name":"f","arguments":{"days":1,"top":2}}')
    assert not admits(grammar, '{"name":"f","arguments":{"days":1,"top":3}}')
    assert admits(grammar, '{"name":"f","arguments":{"days":1,"count":250}}')
    assert not admits(grammar, '{"name":"f","arguments":{"days":1,"count":-2}}')


# --- placeholders excluded by the grammar ------------------------------------------------------


SEARCH = tool("web_search", {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
        "lang": {"type": "string", "maxLength": 5},
    },
    "required": ["query"],
})


def search_call(query: str, tags: str = "") -> str:
    extra = f',"tags":["{tags}"]' if tags else ""
    return '{"name":"web_search","arguments":{"query":"' + query + '"' + extra + "}}"


@pytest.mark.parametrize("value", ["web_search", "web search", "query", "send_email", ""])
def test_a_placeholder_value_is_refused(value: str) -> None:
    grammar = call_grammar([SEARCH], ["web_search", "send_email"], lambda v: False) or ""
    assert not admits(grammar, search_call(value))


@pytest.mark.parametrize(
    "value", ["web_searc", "web_search2", "Web_search", "queryx", "q", "vegan lasagna", 'a\\"b']
)
def test_every_other_value_is_admitted(value: str) -> None:
    grammar = call_grammar([SEARCH], ["web_search", "send_email"], lambda v: False) or ""
    assert admits(grammar, search_call(value))


def test_array_items_and_mentioned_values() -> None:
    # Items of an array parameter count as that parameter; a value the conversation has is
    # allowed ("search for the word query").
    grammar = call_grammar([SEARCH], ["web_search"], lambda v: v == "query") or ""
    assert not admits(grammar, search_call("ok", tags="tags"))
    assert admits(grammar, search_call("ok", tags="tag"))
    assert admits(grammar, search_call("query"))


def test_strings_with_other_bounds_are_not_changed() -> None:
    # maxLength keeps its own repetition rule: the exclusion applies to unbounded strings only.
    plain = call_grammar([SEARCH]) or ""
    avoiding = call_grammar([SEARCH], ["web_search"], lambda v: False) or ""
    assert 'char{0,5}' in plain and 'char{0,5}' in avoiding


def test_a_string_that_holds_an_avoided_word_ends_soon_after() -> None:
    # Stopped at the end of "web_search", a model ran on until max_tokens cut the call.
    from forge_llamafile.grammar import AFTER_AVOIDED

    grammar = call_grammar([SEARCH], ["web_search"], lambda v: False) or ""
    assert admits(grammar, search_call("web_search" + "x" * AFTER_AVOIDED))
    assert not admits(grammar, search_call("web_search" + "x" * (AFTER_AVOIDED + 1)))
    assert admits(grammar, search_call("web_searc" + "x" * 500))  # other values: unbounded

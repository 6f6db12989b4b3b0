"""One table, many answers: rescue (when the answer is text) then validation.

Where each fixture's wire format comes from:
- fenced ```json calls: Qwen2.5-Coder prints calls as ```json blocks when the hermes prompt is
  ignored (github.com/hanXen/vllm-qwen2.5-coder-tool-parser, README "Problem").
- Hermes/Qwen ``<tool_call>{"name", "arguments"}</tool_call>``, closing tag optional at the end:
  vLLM ``Hermes2ProToolParser`` (regex ``<tool_call>(.*?)</tool_call>|<tool_call>(.*)``,
  docs.vllm.ai .../tool_parsers/hermes_tool_parser).
- Mistral ``[TOOL_CALLS] [{"name", "arguments"}]`` (pre-v11 tokenizers) and
  ``[TOOL_CALLS]name[ARGS]{...}`` (v11+, Devstral): vLLM mistral tool parser and vLLM PR #39294;
  ``[TOOL_CALLS]name{...}``: the newer form quoted in the vllm-mlx Mistral parser docstring.
- Llama 3.x ``<|python_tag|>{"name", "parameters"}``, several joined by ``;``: vLLM
  ``Llama3JsonToolParser`` (llama3_json); ``name.call(...)`` is Llama 3.1's built-in tool form.
- Qwen3-Coder ``<function=NAME><parameter=KEY>\nVALUE\n</parameter></function>`` inside
  ``<tool_call>``: vLLM ``--tool-call-parser qwen3_xml`` / the model's qwen3coder_tool_parser.py.
- ``<think>`` blocks (Qwen3, DeepSeek-R1) and ``[THINK]`` (Magistral); Qwen3 templates open the
  think block in the prompt, so the output may start inside it and only close it.
- ``tool_choice`` shapes: OpenAI chat completions ("auto"/"none"/"required"/named function) and
  Anthropic ({"type": "any"} / {"type": "tool", "name": ...}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from guardrail_tools import TOOLS

from forge_core.guardrails.rescue import BUILTIN_PARSERS, rescue
from forge_core.guardrails.validate import ToolIndex, validate_turn
from forge_core.turns import AssistantTurn, ToolCall

INDEX = ToolIndex(TOOLS)


@dataclass
class Case:
    id: str
    text: str = ""
    native: list[tuple[str, str, str]] = field(default_factory=list)
    """Native calls as (id, name, arguments text); used instead of rescuing ``text``."""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Expected rescued calls (name, arguments)."""
    prose: str | None = None
    """Expected remaining prose (checked when not None)."""
    problems: list[str] = field(default_factory=list)
    """Expected problem messages, exactly and in order."""
    kinds: list[str] | None = None
    """Expected problem kinds (defaults to "schema" for every expected message)."""
    tool_choice: Any = "auto"


W = "get_weather"
CITY = {"city": "Paris"}

CASES = [
    # --- rescued and valid -----------------------------------------------------------------
    Case(
        "fenced-json",
        'Sure.\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\nOne moment.',
        calls=[(W, CITY)],
        prose="Sure.\n\nOne moment.",
    ),
    Case(
        "fenced-no-lang",
        '```\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        calls=[(W, CITY)],
        prose="",
    ),
    Case(
        "fenced-tool-args-keys",
        '```json\n{"tool": "search", "args": {"query": "x"}}\n```',
        calls=[("search", {"query": "x"})],
    ),
    Case(
        "fenced-function-key",
        '```json\n{"function": "search", "arguments": {"query": "x"}}\n```',
        calls=[("search", {"query": "x"})],
    ),
    Case(
        "fenced-list-two-calls",
        '```json\n[{"name": "search", "arguments": {"query": "a"}},\n'
        ' {"name": "get_weather", "arguments": {"city": "Paris"}}]\n```',
        calls=[("search", {"query": "a"}), (W, CITY)],
    ),
    Case(
        "fenced-unclosed-at-end",
        'Calling:\n```json\n{"name": "list_files", "arguments": {}}',
        calls=[("list_files", {})],
        prose="Calling:",
    ),
    Case(
        "bare-object-in-prose",
        'I will check. {"name": "get_weather", "arguments": {"city": "Paris"}} Thanks.',
        calls=[(W, CITY)],
        prose="I will check. Thanks.",
    ),
    Case(
        "bare-two-objects",
        '{"name": "search", "arguments": {"query": "a"}}\n'
        '{"name": "search", "arguments": {"query": "b"}}',
        calls=[("search", {"query": "a"}), ("search", {"query": "b"})],
        prose="",
    ),
    Case("bare-list", '[{"name": "list_files", "arguments": {}}]', calls=[("list_files", {})]),
    Case(
        "arguments-as-json-string",
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
        calls=[(W, CITY)],
    ),
    Case(
        "openai-shape-printed",
        '{"type": "function", "function": {"name": "get_weather", '
        '"arguments": "{\\"city\\": \\"Paris\\"}"}}',
        calls=[(W, CITY)],
    ),
    Case(
        "tool-calls-wrapper",
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}',
        calls=[(W, CITY)],
    ),
    Case(
        "llama32-bare-parameters",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        calls=[(W, CITY)],
    ),
    Case("name-only-no-arguments", '{"name": "list_files"}', calls=[("list_files", {})]),
    Case(
        "hermes-one",
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>",
        calls=[(W, CITY)],
        prose="Let me look.",
    ),
    Case(
        "hermes-two",
        '<tool_call>\n{"name": "search", "arguments": {"query": "a"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        calls=[("search", {"query": "a"}), (W, CITY)],
        prose="",
    ),
    Case(
        "hermes-unclosed-at-end",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
        calls=[(W, CITY)],
        prose="",
    ),
    Case(
        "mistral-list",
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        calls=[(W, CITY)],
        prose="",
    ),
    Case(
        "mistral-args-token",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
        calls=[(W, CITY)],
        prose="",
    ),
    Case(
        "mistral-name-then-json",
        'Checking.[TOOL_CALLS]get_weather{"city": "Paris"}[TOOL_CALLS]search{"query": "q"}',
        calls=[(W, CITY), ("search", {"query": "q"})],
        prose="Checking.",
    ),
    Case(
        "llama3-python-tag",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>',
        calls=[(W, CITY)],
        prose="",
    ),
    Case(
        "llama3-semicolons",
        '<|python_tag|>{"name": "search", "parameters": {"query": "a"}}; '
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        calls=[("search", {"query": "a"}), (W, CITY)],
    ),
    Case(
        "llama3-builtin-call",
        '<|python_tag|>search.call(query="weather in Paris")',
        calls=[("search", {"query": "weather in Paris"})],
        prose="",
    ),
    Case(
        "qwen-xml-bare",
        "Sure <function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function> done",
        calls=[(W, {"city": "Paris", "days": 3})],
        prose="Sure done",
    ),
    Case(
        "qwen3-coder-in-tool-call",
        "<tool_call>\n<function=search>\n<parameter=query>\nlatest news\n</parameter>\n"
        '<parameter=tags>\n["a", "b"]\n</parameter>\n</function>\n</tool_call>',
        calls=[("search", {"query": "latest news", "tags": ["a", "b"]})],
        prose="",
    ),
    Case(
        "think-then-call",
        '<think>maybe {"name": "search", "arguments": {"query": "no"}}</think>\n'
        '{"name": "search", "arguments": {"query": "yes"}}',
        calls=[("search", {"query": "yes"})],
        prose="",
    ),
    Case(
        "several-calls-different-formats-first-parser-wins",
        '<tool_call>{"name": "search", "arguments": {"query": "tag"}}</tool_call>\n'
        'also {"name": "list_files", "arguments": {}}',
        calls=[("search", {"query": "tag"})],
    ),
    # --- prose that must stay prose --------------------------------------------------------
    Case("config-json-is-prose", 'use {"a": 1} as config', prose='use {"a": 1} as config'),
    Case(
        "plain-prose-auto", "The weather in Paris is mild.", prose="The weather in Paris is mild."
    ),
    Case(
        "think-only-call-not-rescued",
        '<think>{"name": "search", "arguments": {"query": "x"}}</think>The answer is 4.',
        prose="The answer is 4.",
    ),
    Case(
        "magistral-think", '[THINK]{"name": "search", "arguments": {}}[/THINK]Done.', prose="Done."
    ),
    Case(
        "qwen3-orphan-think-close",
        'I should call {"name": "search", "arguments": {"query": "x"}}\n</think>\n\nHello!',
        prose="Hello!",
    ),
    Case(
        "unknown-tool-fenced-not-rescued",
        '```json\n{"name": "get_wether", "arguments": {"city": "Paris"}}\n```',
    ),
    Case(
        "unknown-tool-hermes-not-rescued",
        '<tool_call>{"name": "delete_all", "arguments": {}}</tool_call>',
    ),
    Case(
        "tool-definition-not-a-call",
        'The tool is {"name": "search", "description": "Web search", "parameters": '
        '{"type": "object", "properties": {"query": {"type": "string"}}}}',
    ),
    Case(
        "mixed-list-not-rescued",
        '[{"name": "search", "arguments": {"query": "a"}}, {"config": true}]',
    ),
    Case(
        "python-code-mentioning-tool",
        "```python\nresult = search(query='x')\nprint(result)\n```",
        prose="```python\nresult = search(query='x')\nprint(result)\n```",
    ),
    Case(
        "broken-json-not-rescued",
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"\n```',
    ),
    Case("prose-with-tool-choice-none", "No tools needed.", tool_choice="none"),
    Case(
        "prose-with-required",
        "I refuse.",
        tool_choice="required",
        kinds=["no_tool_call"],
        problems=[
            "a tool call is required, but the answer has none; "
            "available tools: get_weather, list_files, search"
        ],
    ),
    Case(
        "anthropic-any-without-call",
        "Hmm.",
        tool_choice={"type": "any"},
        kinds=["no_tool_call"],
        problems=[
            "a tool call is required, but the answer has none; "
            "available tools: get_weather, list_files, search"
        ],
    ),
    Case(
        "named-choice-other-tool-called",
        '{"name": "list_files", "arguments": {}}',
        calls=[("list_files", {})],
        tool_choice={"type": "function", "function": {"name": "search"}},
        kinds=["no_tool_call"],
        problems=["a call to tool 'search' is required, but the answer has none"],
    ),
    Case(
        "anthropic-named-choice-satisfied",
        '{"name": "search", "arguments": {"query": "q"}}',
        calls=[("search", {"query": "q"})],
        tool_choice={"type": "tool", "name": "search"},
    ),
    # --- rescued, then rejected by the schema ----------------------------------------------
    Case(
        "schema-enum",
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}}',
        calls=[(W, {"city": "Paris", "unit": "kelvin"})],
        problems=["tool 'get_weather': argument 'unit' must be one of ['c', 'f'], got 'kelvin'"],
    ),
    Case(
        "schema-type",
        '<tool_call>{"name": "get_weather", "arguments": '
        '{"city": "Paris", "days": "3"}}</tool_call>',
        calls=[(W, {"city": "Paris", "days": "3"})],
        problems=["tool 'get_weather': argument 'days' must be of type integer, got string '3'"],
    ),
    Case(
        "schema-required",
        '[TOOL_CALLS]get_weather[ARGS]{"unit": "c"}',
        calls=[(W, {"unit": "c"})],
        problems=["tool 'get_weather': missing required argument 'city'"],
    ),
    Case(
        "schema-additional-properties",
        '{"name": "get_weather", "arguments": {"city": "Paris", "country": "FR"}}',
        calls=[(W, {"city": "Paris", "country": "FR"})],
        problems=["tool 'get_weather': unexpected argument 'country'"],
    ),
    Case(
        "schema-nested-required",
        '{"name": "search", "arguments": {"query": "q", "filters": {"year": 2024}}}',
        calls=[("search", {"query": "q", "filters": {"year": 2024}})],
        problems=["tool 'search': missing required argument 'filters.site'"],
    ),
    Case(
        "schema-nested-type",
        '{"name": "search", "arguments": {"query": "q", "filters": {"site": "a", "year": "x"}}}',
        calls=[("search", {"query": "q", "filters": {"site": "a", "year": "x"}})],
        problems=["tool 'search': argument 'filters.year' must be of type integer, got string 'x'"],
    ),
    Case(
        "schema-array-item",
        '{"name": "search", "arguments": {"query": "q", "tags": ["ok", 7]}}',
        calls=[("search", {"query": "q", "tags": ["ok", 7]})],
        problems=["tool 'search': argument 'tags[1]' must be of type string, got number 7"],
    ),
    Case(
        "schema-maximum",
        '{"name": "get_weather", "arguments": {"city": "Paris", "days": 9}}',
        calls=[(W, {"city": "Paris", "days": 9})],
        problems=["tool 'get_weather': argument 'days' must be <= 7, got 9"],
    ),
    Case(
        "schema-min-length",
        '{"name": "search", "arguments": {"query": ""}}',
        calls=[("search", {"query": ""})],
        problems=["tool 'search': argument 'query' must have at least 1 character, got 0"],
    ),
    Case(
        "schema-any-of",
        '{"name": "search", "arguments": {"query": "q", "mode": "slow"}}',
        calls=[("search", {"query": "q", "mode": "slow"})],
        problems=["tool 'search': argument 'mode' must be integer | 'fast' | 'deep', got 'slow'"],
    ),
    Case(
        "schema-xml-string-decoded-as-number",
        "<function=search>\n<parameter=query>\n42\n</parameter>\n</function>",
        calls=[("search", {"query": 42})],
        problems=["tool 'search': argument 'query' must be of type string, got number 42"],
    ),
    # --- native calls straight from a backend ----------------------------------------------
    Case("native-valid", native=[("call_1", W, '{"city": "Paris"}')]),
    Case("native-empty-arguments-mean-object", native=[("call_1", "list_files", "")]),
    Case(
        "native-unknown-tool",
        native=[("call_1", "get_wether", '{"city": "Paris"}')],
        kinds=["unknown_tool"],
        problems=["unknown tool 'get_wether'; available tools: get_weather, list_files, search"],
    ),
    Case(
        "native-bad-json",
        native=[("call_1", W, '{"city": "Paris" "unit": "c"}')],
        kinds=["invalid_json"],
        problems=[
            "tool 'get_weather': arguments are not valid JSON (Expecting ',' delimiter at char 17)"
        ],
    ),
    Case(
        "native-truncated-json",
        native=[("call_1", W, '{"city": "Par')],
        kinds=["invalid_json"],
        problems=[
            "tool 'get_weather': arguments are not valid JSON "
            "(Unterminated string starting at char 9)"
        ],
    ),
    Case(
        "native-nan-is-not-json",
        native=[("call_1", W, '{"city": "P", "days": NaN}')],
        kinds=["invalid_json"],
        problems=["tool 'get_weather': arguments are not valid JSON (NaN is not valid JSON)"],
    ),
    Case(
        "native-not-object",
        native=[("call_1", W, '["Paris"]')],
        kinds=["not_object"],
        problems=["tool 'get_weather': arguments must be a JSON object, got array"],
    ),
    Case(
        "native-duplicate-id",
        native=[("call_1", "list_files", "{}"), ("call_1", "search", '{"query": "q"}')],
        kinds=["duplicate_id"],
        problems=["tool 'search': call id 'call_1' is used twice"],
    ),
    Case(
        "native-missing-id",
        native=[("", "list_files", "{}")],
        kinds=["missing_id"],
        problems=["tool 'list_files': call has no id"],
    ),
    Case(
        "native-two-problems-in-order",
        native=[("a", "nope", "{}"), ("b", W, '{"city": 1}')],
        kinds=["unknown_tool", "schema"],
        problems=[
            "unknown tool 'nope'; available tools: get_weather, list_files, search",
            "tool 'get_weather': argument 'city' must be of type string, got number 1",
        ],
    ),
]


def _turn(case: Case) -> tuple[AssistantTurn, str]:
    if case.native:
        calls = [ToolCall(i, n, a) for i, n, a in case.native]
        return AssistantTurn(tool_calls=calls), ""
    found, prose = rescue(case.text, INDEX.names, BUILTIN_PARSERS)
    assert [(c.name, c.arguments) for c in found] == case.calls
    calls = [ToolCall(f"call_{i}", c.name, json.dumps(c.arguments)) for i, c in enumerate(found)]
    return AssistantTurn(content=prose, tool_calls=calls), prose


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_case(case: Case) -> None:
    turn, prose = _turn(case)
    if case.prose is not None:
        assert prose == case.prose
    if not case.native and not case.calls:
        assert prose, "an answer that is not rescued keeps its text"
    problems = validate_turn(turn, INDEX, case.tool_choice)
    assert [p.message for p in problems] == case.problems
    kinds = case.kinds if case.kinds is not None else ["schema"] * len(case.problems)
    assert [p.kind for p in problems] == kinds

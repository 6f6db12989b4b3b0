"""The prompt capability's rendering (forge_core.prompt_tools) and its start-up rule: only a
backend that declares it accepts ``--backend-capability prompt``."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from click.testing import CliRunner

from forge_core import cli
from forge_core.errors import PluginError
from forge_core.guardrails.rescue import BUILTIN_PARSERS, rescue
from forge_core.plugins import PluginHost, installed_plugins
from forge_core.prompt_tools import call_text, downgrade_history, render_tools, to_prompt_body
from forge_core.testing import WEATHER_TOOL

SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for"},
                "limit": {"type": ["integer", "null"]},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["query"],
        },
    },
}


def test_render_lists_every_tool_with_its_schema_and_the_format() -> None:
    text = render_tools([WEATHER_TOOL, SEARCH_TOOL])
    for tool in (WEATHER_TOOL, SEARCH_TOOL):
        function = tool["function"]
        assert f"## {function['name']}" in text
        assert function["description"] in text
        assert json.dumps(function["parameters"]) in text
    assert "query (string, required): What to look for" in text
    assert "limit (integer or null, optional)" in text
    assert "tags (array of string, optional)" in text
    assert "When one of these tools can help, call it" in text
    assert "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": <string>}}" in text


@pytest.mark.parametrize(
    ("choice", "rule"),
    [
        ("required", "You must call one or more of these tools now."),
        ({"type": "function", "function": {"name": "search"}}, "You must call the tool search"),
        ("auto", "call it; otherwise answer in plain text"),
        (None, "call it; otherwise answer in plain text"),
    ],
)
def test_render_states_the_tool_choice(choice: Any, rule: str) -> None:
    assert rule in render_tools([WEATHER_TOOL, SEARCH_TOOL], choice)


def test_the_format_example_is_not_itself_a_call() -> None:
    """A model that copies the example verbatim must not produce a call with made-up values."""
    text = render_tools([WEATHER_TOOL])
    found, _ = rescue(text, {"get_weather"}, BUILTIN_PARSERS)
    assert found == []


def test_downgraded_calls_are_read_back_by_the_rescue_parsers() -> None:
    """The history format and the format asked of the model are one and the same."""
    text = call_text("get_weather", '{"city": "Paris", "unit": "c"}')
    found, rest = rescue(text, {"get_weather"}, BUILTIN_PARSERS)
    assert [(c.name, c.arguments) for c in found] == [("get_weather", {"city": "Paris",
                                                                        "unit": "c"})]
    assert rest == ""


def test_broken_arguments_stay_as_the_model_wrote_them() -> None:
    assert call_text("f", '{"a": ') == '<tool_call>\n{"name": "f", "arguments": "{\\"a\\": "}\n' \
        "</tool_call>"


def test_to_prompt_body_does_not_mutate_the_request() -> None:
    body: dict[str, Any] = {
        "model": "m", "temperature": 0.2, "tools": [WEATHER_TOOL], "tool_choice": "required",
        "parallel_tool_calls": True,
        "messages": [
            {"role": "developer", "content": "Rules."},
            {"role": "user", "content": [{"type": "text", "text": "Paris?"}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "a", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "a", "content": "21 C"},
            {"role": "user", "content": "Thanks; and tomorrow?"},
        ],
    }
    before = copy.deepcopy(body)
    out = to_prompt_body(body)
    assert body == before
    assert out["temperature"] == 0.2 and out["model"] == "m"
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(out)
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert out["messages"][0]["content"].startswith("Rules.\n\n# Tools")
    assert out["messages"][1] == before["messages"][1]  # untouched parts stay the client's
    assert out["messages"][2]["content"].startswith("Checking.\n<tool_call>")
    assert out["messages"][3]["content"] == (
        '<tool_response name="get_weather">\n21 C\n</tool_response>\nThanks; and tomorrow?'
    )


def test_without_tools_only_the_history_is_downgraded() -> None:
    body = {"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "x", "name": "f", "content": "done"},
    ]}
    out = to_prompt_body(body)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert all("# Tools" not in m["content"] for m in out["messages"])


def test_plain_user_turns_are_not_merged() -> None:
    history = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert downgrade_history(history) == history


# --- start-up rule ------------------------------------------------------------------------------

OPTS: dict[str, Any] = {
    "backend_capability": "prompt", "backend_url": "http://x", "model": "m",
    "backend_timeout": 300.0, "serialize": None, "api_key_env": "FORGE_TEST_KEY_UNSET",
    "host": "127.0.0.1", "port": 1, "max_body_bytes": 10, "max_retries": 3,
    "no_rescue": False, "inject_respond_tool": False, "keepalive_interval": 5.0,
    "max_queue": 4, "any_model": False,
}


@pytest.mark.parametrize("name", ["vllm", "ollama", "anthropic"])
def test_native_only_plugins_reject_prompt_at_start(name: str) -> None:
    if name not in installed_plugins():
        pytest.skip(f"the {name} plugin is not installed")
    host = PluginHost()
    host.load([name])
    spec = host.backends()[name]
    assert spec.capabilities.prompt_tools is False
    with pytest.raises(PluginError, match="does not allow --backend-capability prompt"):
        cli.build_config(spec, OPTS, {})
    result = CliRunner().invoke(
        cli.main, ["serve", "--plugin", name, "--backend-url", "http://127.0.0.1:9",
                   "--model", "m", "--backend-capability", "prompt"],
    )
    assert result.exit_code == 2
    assert "does not allow --backend-capability prompt" in result.output
    assert "llamafile" in result.output  # where to go instead


def test_llamafile_accepts_prompt() -> None:
    if "llamafile" not in installed_plugins():
        pytest.skip("the llamafile plugin is not installed")
    host = PluginHost()
    host.load(["llamafile"])
    spec = host.backends()["llamafile"]
    config = cli.build_config(spec, OPTS, {})
    assert config.backend.capability == "prompt"
    client = spec.client_factory(config.backend)
    assert client.tools_in_prompt is True

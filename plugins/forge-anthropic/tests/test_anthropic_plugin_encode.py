"""The backend-side encoder: an OpenAI body as an Anthropic Messages request."""

from __future__ import annotations

import json
from pathlib import Path

from forge_anthropic.encode import from_openai_request

from forge_core.wire.anthropic import parse_messages_request, to_openai_request

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "anthropic"


def test_from_openai_request_round_trips_a_tool_conversation() -> None:
    raw = json.loads((FIXTURES / "request_claude_code.json").read_text())
    openai_body = to_openai_request(parse_messages_request(raw))
    back = from_openai_request(openai_body)
    assert back["system"].startswith("You are Claude Code")
    assert back["max_tokens"] == 32000
    assert [m["role"] for m in back["messages"]] == ["user", "assistant", "user"]
    assistant = back["messages"][1]["content"]
    assert assistant[1] == {
        "type": "tool_use",
        "id": "toolu_01A09q90qw90lq917835lq9",
        "name": "Read",
        "input": {"file_path": "/repo/README.md"},
    }
    last = back["messages"][2]["content"]
    assert last[0]["type"] == "tool_result"
    assert last[0]["tool_use_id"] == "toolu_01A09q90qw90lq917835lq9"
    assert last[1] == {"type": "text", "text": "Summarize it in one line."}
    assert [t["name"] for t in back["tools"]] == ["Read", "Bash"]
    assert back["tools"][0]["input_schema"]["additionalProperties"] is False
    assert back["metadata"] == {"user_id": "user_abc_account__session_123"}
    assert back["stream"] is True


def test_from_openai_request_maps_choice_stop_and_defaults() -> None:
    back = from_openai_request(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Rules."},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{not json"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "bad call"},
                {"role": "user", "content": "try again"},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "stop": "END",
        },
        default_max_tokens=1000,
    )
    assert back["system"] == "Rules."
    assert back["max_tokens"] == 1000
    assert back["stop_sequences"] == ["END"]
    assert back["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert back["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    assert back["messages"][1]["content"][0]["input"] == {"_unparsed_arguments": "{not json"}
    # The tool result and the nudge that follows share one user turn, result first.
    assert back["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "bad call"},
            {"type": "text", "text": "try again"},
        ],
    }
    assert "stream" not in back


def test_from_openai_request_images_and_named_choice() -> None:
    back = from_openai_request(
        {
            "model": "m",
            "max_tokens": 10,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,QQ=="}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/i.png"}},
                    ],
                }
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        }
    )
    assert back["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QQ=="}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/i.png"}},
    ]
    assert back["tool_choice"] == {"type": "tool", "name": "f"}

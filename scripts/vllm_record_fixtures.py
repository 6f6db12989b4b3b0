"""Record real vLLM responses, byte for byte, as test fixtures for the forge-vllm plugin.

Usage (run with /work/main/.venv/bin/python; the server must already be up):

    python scripts/vllm_record_fixtures.py --base-url http://127.0.0.1:8200 --mode tools
    python scripts/vllm_record_fixtures.py --base-url http://127.0.0.1:8201 --mode plain

``--mode tools`` expects a server started with ``--enable-auto-tool-choice --tool-call-parser
hermes --chat-template hermes-smollm2.jinja``; ``--mode plain`` one started without them;
``--mode parser-only`` one started with ``--tool-call-parser hermes`` alone.
Each case writes ``NAME.body`` (the raw response bytes, SSE included) and ``NAME.meta.json``
(method, path, request body, status, content type) into tests/fixtures/vllm/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx

MODEL = "smollm2-135m"
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "vllm"

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current local time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
# What forge-vllm's constrained retry sends: vLLM 0.32 pins the argument schema of a forced call
# only for tools marked strict (its --tool-strict-level defaults to "auto").
STRICT_WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {**WEATHER_TOOL["function"], "strict": True},
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
SAY_HELLO = [{"role": "user", "content": "Say hello in five words."}]
# The readiness probe forge-vllm sends: cheap, and vLLM rejects it before generating anything
# when the tool flags are missing.
PROBE: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "ping"}],
    "tools": [WEATHER_TOOL],
    "tool_choice": "auto",
    "max_tokens": 1,
}

# The second probe: tells "no --tool-call-parser" apart from "parser but no auto tool choice".
PROBE_REQUIRED: dict[str, Any] = {**PROBE, "tool_choice": "required"}


def chat(**fields: Any) -> dict[str, Any]:
    """A chat body for the recorded model; greedy so recordings are repeatable."""
    return {"model": MODEL, "temperature": 0, **fields}


STREAM = {"stream": True, "stream_options": {"include_usage": True}}

TOOLS_CASES: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "models": ("GET", "/v1/models", None),
    "tool_call_required": (
        "POST",
        "/v1/chat/completions",
        chat(messages=ASK_WEATHER, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required",
             max_tokens=256),
    ),
    "tool_call_named": (
        "POST",
        "/v1/chat/completions",
        chat(messages=ASK_WEATHER, tools=[WEATHER_TOOL, TIME_TOOL],
             tool_choice={"type": "function", "function": {"name": "get_weather"}},
             max_tokens=256),
    ),
    "tool_call_required_stream": (
        "POST",
        "/v1/chat/completions",
        chat(messages=ASK_WEATHER, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required",
             max_tokens=256, **STREAM),
    ),
    "tool_call_named_stream": (
        "POST",
        "/v1/chat/completions",
        chat(messages=ASK_WEATHER, tools=[WEATHER_TOOL, TIME_TOOL],
             tool_choice={"type": "function", "function": {"name": "get_weather"}},
             max_tokens=256, **STREAM),
    ),
    "tool_call_strict_named": (
        "POST",
        "/v1/chat/completions",
        chat(messages=ASK_WEATHER, tools=[STRICT_WEATHER_TOOL, TIME_TOOL],
             tool_choice={"type": "function", "function": {"name": "get_weather"}},
             max_tokens=256),
    ),
    "tool_call_strict_required_stream": (
        "POST",
        "/v1/chat/completions",
        chat(messages=ASK_WEATHER, tools=[STRICT_WEATHER_TOOL], tool_choice="required",
             max_tokens=256, **STREAM),
    ),
    "tool_result_followup": (
        "POST",
        "/v1/chat/completions",
        chat(
            messages=[
                *ASK_WEATHER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_0",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_0", "content": '{"temp_c": 21}'},
            ],
            tools=[WEATHER_TOOL],
            max_tokens=48,
        ),
    ),
    "tool_auto": (
        "POST",
        "/v1/chat/completions",
        chat(messages=ASK_WEATHER, tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=128),
    ),
    "text": ("POST", "/v1/chat/completions", chat(messages=SAY_HELLO, max_tokens=32)),
    "text_stream": (
        "POST", "/v1/chat/completions", chat(messages=SAY_HELLO, max_tokens=32, **STREAM)
    ),
    "text_length": ("POST", "/v1/chat/completions", chat(messages=SAY_HELLO, max_tokens=3)),
    "probe_ok": ("POST", "/v1/chat/completions", PROBE),
    "tokenize_chat": (
        "POST", "/tokenize", {"model": MODEL, "messages": SAY_HELLO, "tools": [WEATHER_TOOL]}
    ),
    "probe_required_ok": ("POST", "/v1/chat/completions", PROBE_REQUIRED),
    "wrong_model": (
        "POST",
        "/v1/chat/completions",
        {**chat(messages=SAY_HELLO, max_tokens=8), "model": "Qwen3-8B"},
    ),
    "wrong_model_stream": (
        "POST",
        "/v1/chat/completions",
        {**chat(messages=SAY_HELLO, max_tokens=8, **STREAM), "model": "Qwen3-8B"},
    ),
    "invalid_messages": ("POST", "/v1/chat/completions", chat(messages="hello", max_tokens=8)),
    "max_tokens_too_large": (
        "POST", "/v1/chat/completions", chat(messages=SAY_HELLO, max_tokens=4096)
    ),
}

PLAIN_CASES: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "noflags_models": ("GET", "/v1/models", None),
    "noflags_probe": ("POST", "/v1/chat/completions", PROBE),
    "noflags_probe_required": ("POST", "/v1/chat/completions", PROBE_REQUIRED),
    "noflags_required": (
        "POST",
        "/v1/chat/completions",
        chat(messages=ASK_WEATHER, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=256),
    ),
    "noflags_named": (
        "POST",
        "/v1/chat/completions",
        chat(messages=ASK_WEATHER, tools=[WEATHER_TOOL],
             tool_choice={"type": "function", "function": {"name": "get_weather"}},
             max_tokens=256),
    ),
    "noflags_tools_no_choice": (
        "POST",
        "/v1/chat/completions",
        chat(messages=ASK_WEATHER, tools=[WEATHER_TOOL], max_tokens=64),
    ),
}

PARSER_ONLY_CASES: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "parseronly_probe": ("POST", "/v1/chat/completions", PROBE),
    "parseronly_probe_required": ("POST", "/v1/chat/completions", PROBE_REQUIRED),
}
MODES = {"tools": TOOLS_CASES, "plain": PLAIN_CASES, "parser-only": PARSER_ONLY_CASES}


def record(base_url: str, cases: dict[str, tuple[str, str, dict[str, Any] | None]]) -> None:
    """Send every case and write its raw response bytes and metadata."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    # identity encoding so the recorded bytes are the plain body vLLM writes
    with httpx.Client(
        base_url=base_url, timeout=600, headers={"Accept-Encoding": "identity"}
    ) as client:
        for name, (method, path, body) in cases.items():
            content = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if content else {}
            with client.stream(method, path, content=content, headers=headers) as response:
                raw = b"".join(response.iter_raw())  # undecoded: exactly what vLLM sent
            (FIXTURES / f"{name}.body").write_bytes(raw)
            meta = {
                "method": method,
                "path": path,
                "request": body,
                "status": response.status_code,
                "content_type": response.headers.get("content-type"),
            }
            (FIXTURES / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            print(f"{name}: HTTP {response.status_code}, {len(raw)} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--mode", choices=sorted(MODES), required=True)
    parser.add_argument("--only", nargs="*", help="record only these cases")
    args = parser.parse_args()
    cases = MODES[args.mode]
    if args.only:
        cases = {name: case for name, case in cases.items() if name in args.only}
    record(args.base_url, cases)


if __name__ == "__main__":
    main()

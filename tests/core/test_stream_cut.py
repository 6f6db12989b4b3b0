"""An OpenAI-wire stream that ends without its end (no finish_reason, no ``[DONE]``) was cut by
the server or a proxy: an error for the client, never a silently shortened answer."""

from __future__ import annotations

import json

import httpx
import pytest

from forge_core.testing import WEATHER_TOOL, chat, forge_client


def _event(delta: dict[str, object], finish: str | None = None) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "fake-model",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _backend(events: list[bytes]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(events)
        )

    return httpx.MockTransport(handle)


CUT = [_event({"role": "assistant"}), _event({"content": "The weather in Par"})]


async def test_prose_cut_mid_stream_ends_with_an_error_event_after_the_text() -> None:
    async with forge_client(_backend(CUT)) as http:
        r = await http.post("/v1/chat/completions", json=chat("hi", stream=True))
    assert r.status_code == 200  # the text was already on its way
    datas = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    error = json.loads(datas[-2])["error"]
    assert "fake" in error["message"] and "before the answer was finished" in error["message"]
    shown = "".join(
        (json.loads(d)["choices"][0]["delta"].get("content") or "")
        for d in datas[:-2] if json.loads(d).get("choices")
    )
    assert shown == "The weather in Par"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_cut_before_its_end_is_a_502_naming_the_backend(stream: bool) -> None:
    events = [_event({"role": "assistant"}), _event({"tool_calls": [{
        "index": 0, "id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Pa'}}]})]
    async with forge_client(_backend(events)) as http:
        r = await http.post(
            "/v1/chat/completions",
            json=chat("weather?", tools=[WEATHER_TOOL], tool_choice="required", stream=stream),
        )
    # Nothing was shown yet (a call is held until valid): a real status can still be sent.
    assert r.status_code == 502, r.text
    assert "fake" in r.json()["error"]["message"]


async def test_a_stream_with_a_finish_reason_but_no_done_is_complete() -> None:
    events = [_event({"role": "assistant"}), _event({"content": "Hello."}), _event({}, "stop")]
    async with forge_client(_backend(events)) as http:
        r = await http.post("/v1/chat/completions", json=chat("hi", stream=True))
    assert r.status_code == 200
    datas = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]" and "error" not in r.text
    assert json.loads(datas[-2])["choices"][0]["finish_reason"] == "stop"

"""End to end over a real socket: OllamaClient -> uvicorn on 127.0.0.1 -> the fake Ollama.

The fake's Starlette app is what later end-to-end tests (forge in front of "Ollama") reuse.
"""

from __future__ import annotations

import pytest
from fake_ollama import Exchange, FakeOllama, assemble, serve_on_loopback
from forge_ollama.client import OllamaClient

from forge_core.backend import BackendRequest, BackendSettings
from forge_core.errors import ModelNotFound


@pytest.mark.asyncio
async def test_streamed_tool_call_over_loopback() -> None:
    fake = FakeOllama()
    fake.script(Exchange(stream="chat_stream_parallel_index0.ndjson"))
    async with serve_on_loopback(fake) as url:
        settings = BackendSettings(backend_url=url, model="qwen3:8b", timeout=30.0)
        client = OllamaClient(settings)
        await client.start()
        assert [m.wire_name for m in client.models()] == ["qwen3:8b"]
        body = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}]}
        chunks = [c async for c in client.stream(BackendRequest(body=body))]
        turn = assemble(chunks)
        assert [(c.name, c.arguments) for c in turn.tool_calls] == [
            ("get_temperature", '{"city":"New York"}'),
            ("get_temperature", '{"city":"London"}'),
        ]
        assert turn.finish_reason == "tool_calls"
        with pytest.raises(ModelNotFound):
            await client.complete(BackendRequest(body={**body, "model": "nope"}))
        await client.aclose()
    assert fake.chat_requests[0]["model"] == "qwen3:8b"

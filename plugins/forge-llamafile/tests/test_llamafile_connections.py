"""Connection reuse with llama-server: a streamed completion asks for its own connection
(llama-server serves nothing more on a connection after a stream), other requests keep the
pooled one."""

from __future__ import annotations

import httpx
from forge_llamafile.client import LlamafileClient

from forge_core.backend import BackendRequest, BackendSettings

STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
ANSWER = (
    b'{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},'
    b'"finish_reason":"stop"}]}'
)


async def test_only_streamed_completions_ask_to_close_the_connection() -> None:
    seen: list[tuple[bool, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        streamed = b'"stream":true' in request.content or b'"stream": true' in request.content
        seen.append((streamed, request.headers.get("connection")))
        if streamed:
            return httpx.Response(200, content=STREAM,
                                  headers={"content-type": "text/event-stream"})
        return httpx.Response(200, content=ANSWER, headers={"content-type": "application/json"})

    settings = BackendSettings(backend_url="http://llama.test", model="m", timeout=10.0)
    client = LlamafileClient(settings, transport=httpx.MockTransport(handler))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    try:
        chunks = [c async for c in client.stream(BackendRequest(body=dict(body)))]
        turn = await client.complete(BackendRequest(body=dict(body)))
    finally:
        await client.aclose()
    assert "".join(c.text for c in chunks) == "hi" and turn.content == "hi"
    assert seen[0] == (True, "close")
    assert seen[1][0] is False and seen[1][1] != "close"

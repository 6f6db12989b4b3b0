"""The baseline proxy: starlette + one shared httpx.AsyncClient, forwarding bytes and nothing more.

It does what any proxy in forge's place must do (read the body, send it on over a pooled
connection, return the answer; for streams, forward each piece as it arrives) and none of
forge's work (no parsing, no validation, no re-encoding). Run on uvicorn with the same
settings as forge, so the difference between the two is forge's own cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def make_passthrough(backend_url: str) -> Starlette:
    """A starlette app forwarding POST /v1/chat/completions to ``backend_url``."""
    client = httpx.AsyncClient(
        base_url=backend_url,
        timeout=httpx.Timeout(300.0, connect=10.0),
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
    )

    async def chat(request: Request) -> Response:
        body = await request.body()
        outgoing = client.build_request(
            "POST", "/v1/chat/completions", content=body,
            headers={"content-type": "application/json"},
        )
        response = await client.send(outgoing, stream=True)
        ctype = response.headers.get("content-type", "application/json")
        if ctype.startswith("text/event-stream"):
            return StreamingResponse(
                response.aiter_raw(), status_code=response.status_code, media_type=ctype,
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
                background=BackgroundTask(response.aclose),
            )
        content = await response.aread()
        await response.aclose()
        return Response(content, status_code=response.status_code, media_type=ctype)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )

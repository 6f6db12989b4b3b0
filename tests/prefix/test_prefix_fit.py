"""Requests that fit: ``max_tokens`` clamped to the room the context leaves, a refusal only when
the prompt alone does not fit, and the context length in ``/v1/models``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from forge_core.budget import ContextBudget, fit_request
from forge_core.errors import ContextExceeded
from forge_core.testing import ScriptedBackend, build_state, chat, forge_client, reply_text
from forge_core.tokens import MESSAGE_OVERHEAD

BUDGET = 1000


def exact(tokens: int | None) -> Any:
    async def count(body: dict[str, Any]) -> int | None:
        return tokens

    return count


def fit(body: dict[str, Any], count: int | None = None) -> tuple[dict[str, Any], str | None]:
    return asyncio.run(fit_request(body, BUDGET, exact(count)))


def test_max_tokens_is_clamped_to_the_room_an_exact_count_leaves() -> None:
    body = chat("x" * 40, max_tokens=32000)
    out, note = fit(body, count=300)
    assert out["max_tokens"] == 700 and note == "max-tokens-clamped:700"
    assert body["max_tokens"] == 32000  # the client's body is not mutated


def test_both_token_fields_are_clamped_and_absent_ones_stay_absent() -> None:
    out, _ = fit(chat("hi", max_completion_tokens=5000), count=100)
    assert out["max_completion_tokens"] == 900 and "max_tokens" not in out
    out, note = fit(chat("hi", max_tokens=5000, max_completion_tokens=950), count=100)
    assert (out["max_tokens"], out["max_completion_tokens"]) == (900, 900)
    assert note == "max-tokens-clamped:900"


def test_without_an_exact_count_the_prompt_is_estimated_densely() -> None:
    # 900 characters: ~225 tokens at 4 per token, 300 at the dense 3 used for the clamp,
    # plus the message's template overhead.
    out, note = fit(chat("y" * 900, max_tokens=32000), count=None)
    assert out["max_tokens"] == BUDGET - 300 - MESSAGE_OVERHEAD and note


def test_a_request_that_fits_is_left_alone_without_counting() -> None:
    called: list[int] = []

    async def count(body: dict[str, Any]) -> int:
        called.append(1)
        return 10

    out, note = asyncio.run(fit_request(chat("hi", max_tokens=200), BUDGET, count))
    assert out["max_tokens"] == 200 and note is None and not called
    assert fit(chat("hi"), count=10) == (chat("hi"), None)  # no max_tokens: nothing to clamp
    assert asyncio.run(fit_request(chat("hi", max_tokens=9999), None)) == (
        chat("hi", max_tokens=9999), None
    )


def test_only_a_prompt_that_alone_does_not_fit_is_refused() -> None:
    with pytest.raises(ContextExceeded):
        fit(chat("z" * 4000, max_tokens=10), count=BUDGET)
    with pytest.raises(ContextExceeded):
        fit(chat("z" * 7000, max_tokens=10), count=None)  # over budget even at 6 chars/token
    out, _ = fit(chat("z" * 4000, max_tokens=10), count=BUDGET - 1)
    assert out["max_tokens"] == 1


# --- through forge ------------------------------------------------------------------------------


def run(path: str, body: dict[str, Any], budget: int | None = BUDGET) -> Any:
    async def go() -> Any:
        backend = ScriptedBackend().push(reply_text("ok"))
        state = build_state(backend)
        state.budget = ContextBudget("manual", budget)
        async with forge_client(backend, state=state) as http:
            response = await http.post(path, json=body) if path != "/v1/models" else (
                await http.get(path)
            )
            return response, backend.requests

    return asyncio.run(go())


@pytest.mark.parametrize("stream", [False, True])
def test_an_agent_sized_max_tokens_reaches_the_backend_clamped_and_noted(stream: bool) -> None:
    response, sent = run("/v1/chat/completions", chat("a" * 300, max_tokens=32000, stream=stream))
    assert response.status_code == 200
    room = BUDGET - 100 - MESSAGE_OVERHEAD  # 300 dense characters and one message
    assert sent[0]["max_tokens"] == room
    assert f"max-tokens-clamped:{room}" in response.headers["x-forge-guardrail"]


def test_an_anthropic_request_is_clamped_too() -> None:
    body = {"model": "fake-model", "max_tokens": 128000,
            "messages": [{"role": "user", "content": "a" * 300}]}
    response, sent = run("/v1/messages", body)
    assert response.status_code == 200
    assert sent[0]["max_tokens"] == BUDGET - 100 - MESSAGE_OVERHEAD


def test_a_prompt_over_the_budget_gets_a_clear_400_in_each_shape() -> None:
    response, sent = run("/v1/chat/completions", chat("b" * 7000, max_tokens=10))
    assert response.status_code == 400 and not sent
    assert response.json()["error"]["code"] == "context_length_exceeded"
    body = {"model": "fake-model", "max_tokens": 10,
            "messages": [{"role": "user", "content": "b" * 7000}]}
    response, _ = run("/v1/messages", body)
    assert response.status_code == 400 and response.json()["type"] == "error"


def test_models_entries_carry_the_context_length_under_the_names_clients_read() -> None:
    response, _ = run("/v1/models", {})
    entry = response.json()["data"][0]
    assert entry["id"] == "fake-model"
    assert (entry["context_length"], entry["max_model_len"], entry["max_input_tokens"]) == (
        BUDGET, BUDGET, BUDGET
    )
    assert entry["meta"] == {"n_ctx": BUDGET}
    response, _ = run("/v1/models", {}, budget=None)
    assert "context_length" not in json.dumps(response.json())

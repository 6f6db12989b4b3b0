"""One token estimate: the context budget and Anthropic's count_tokens measure a prompt alike."""

from __future__ import annotations

from typing import Any

import pytest

from forge_core import budget, tokens
from forge_core.wire.anthropic import (
    estimate_tokens,
    parse_count_tokens_request,
    to_openai_request,
)

ANTHROPIC_BODY: dict[str, Any] = {
    "model": "m",
    "system": "You are a careful assistant. " * 20,
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "18 C, clear"}]},
    ],
    "tools": [{"name": "get_weather", "description": "Current weather",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
}


def test_count_tokens_and_the_budget_price_the_same_prompt_the_same() -> None:
    request = parse_count_tokens_request(ANTHROPIC_BODY)
    openai_body = to_openai_request(request)
    counted = estimate_tokens(request)
    assert counted == tokens.estimate_tokens(openai_body)
    # The budget's quick estimate is the same figure: a prompt count_tokens says fits in a
    # context is not refused by the budget at the same density.
    assert budget.CHARS_PER_TOKEN == tokens.BYTES_PER_TOKEN
    assert tokens.measure(openai_body).tokens(budget.CHARS_PER_TOKEN) == counted


async def test_the_budget_refuses_by_the_same_estimate() -> None:
    request = parse_count_tokens_request(ANTHROPIC_BODY)
    body = to_openai_request(request)
    floor = tokens.measure(body).tokens(budget.PLAIN_CHARS_PER_TOKEN)
    with pytest.raises(Exception, match="context"):
        await budget.check_prompt(body, floor)  # no exact count: the plain floor decides
    assert await budget.check_prompt(body, floor + 1) == estimate_tokens(request)


@pytest.mark.parametrize("body", [
    {}, {"messages": "x"}, {"messages": [None, 5, {"content": 7}]},
    {"messages": [{"content": [{"type": "text", "text": None}, 3]}], "tools": "nope"},
    {"tools": [5, None, {"function": {"name": "f\ud800"}}]},
])
def test_any_shape_is_measured_without_failing(body: dict[str, Any]) -> None:
    assert tokens.estimate_tokens(body) >= 0


def test_cjk_counts_by_bytes() -> None:
    ascii_size = tokens.measure({"messages": [{"role": "user", "content": "a" * 300}]})
    cjk_size = tokens.measure({"messages": [{"role": "user", "content": "字" * 300}]})
    assert cjk_size.text_bytes == 3 * ascii_size.text_bytes == 900

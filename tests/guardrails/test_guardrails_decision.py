"""Which prose answers get the decision retry under ``--auto-intent decide``
(guardrails/decision.py): refusals and descriptions of the task, not answers."""

from __future__ import annotations

import pytest

from forge_core.guardrails.decision import describes


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't access real-time weather data.",
    "I cannot browse the internet.",
    "As an AI language model, I don't have feelings about umbrellas.",
    "I don't have access to your calendar.",
    "You can use a weather website to check the forecast.",
    "Here's a Python function that converts miles:\n\ndef convert(m): ...",
    "Here is an example of how to do it.",
    "Sure.\n```python\nprint(36 * 12)\n```",
    "<think>hmm</think>I am unable to send emails.",
])
def test_refusals_and_descriptions(text: str) -> None:
    assert describes(text)


@pytest.mark.parametrize("text", [
    "Hello there! How can I help?",
    "The capital of Italy is Rome.",
    "Here's a joke: why did the chicken cross the road?",
    "The waves crashed against the shore.",
    "You can't go wrong with Rome in spring.",
    "Inline `code` is not a block.",
    "",
])
def test_answers_are_not(text: str) -> None:
    assert not describes(text)


def test_only_the_start_of_a_long_answer_is_read() -> None:
    assert not describes("a" * 5000 + " I cannot do that.")

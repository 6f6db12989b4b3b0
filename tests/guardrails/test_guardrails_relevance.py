"""Which offered tool a request asks for, from the tools' own words (guardrails/relevance.py)."""

from __future__ import annotations

from typing import Any

import pytest

from forge_core.guardrails import relevance


def tool(name: str, description: str = "", **properties: Any) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties},
        },
    }


FLIGHT = tool("book_flight", "Book a flight between two airports.", origin={"type": "string"},
              cabin={"type": "string", "enum": ["economy", "business"]})
READ = tool("read_file", "Read a text file from the workspace.", path={"type": "string"})
WRITE = tool("write_file", "Write text to a file.", path={"type": "string"})
CALC = tool("calculator", "Evaluate an arithmetic expression.", expression={"type": "string"})
REMIND = tool("set_reminder", "Set a reminder.", text={"type": "string"})
UNITS = tool("convert_units", "Convert a quantity.", value={"type": "number"},
             from_unit={"type": "string", "enum": ["km", "mi"]})
TODO = tool("createTodo", "Add an item to the to-do list.", title={"type": "string"})
VAGUE = tool("get_thing", "Get the current value.", value={"type": "string"})


def user(text: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_the_object_word_of_the_name_is_enough() -> None:
    assert relevance.asked_for(user("Please book a flight to Rome"), [FLIGHT, READ]) == (
        "book_flight",
    )


def test_a_verb_of_the_name_alone_is_not() -> None:
    # "read" and "book" are the names' verbs: one weak word each, below the threshold.
    assert relevance.asked_for(user("I read a great book yesterday"), [FLIGHT, READ]) == ()
    assert relevance.asked_for(user("Write me a haiku"), [WRITE]) == ()


def test_word_endings_are_merged() -> None:
    assert relevance.asked_for(user("Calculate 17 squared"), [CALC, READ]) == ("calculator",)
    assert relevance.asked_for(user("Remind me to stretch"), [REMIND, READ]) == ("set_reminder",)


def test_camel_case_and_hyphenated_words_match() -> None:
    assert relevance.asked_for(user("Put milk on my to-do list"), [TODO, CALC]) == ("createTodo",)


def test_two_weak_words_count_like_one_strong() -> None:
    # "convert" (the name's verb) and "km" (an enum value).
    assert relevance.asked_for(user("Convert 5 km please"), [UNITS, READ]) == ("convert_units",)


def test_stop_words_and_generic_verbs_are_no_evidence() -> None:
    assert relevance.ranked(user("Get me the current value of it"), [VAGUE]) == []
    assert relevance.ranked(user("Get me the current thing, Bob"), [VAGUE]) == [("get_thing", 0)]
    assert relevance.asked_for(user("Hello there!"), [FLIGHT, READ, CALC]) == ()


def test_the_best_scoring_few_tools_are_returned() -> None:
    # "file" is the object word of both names: a tie of two is still "a few".
    assert set(relevance.asked_for(user("Which file?"), [READ, WRITE, CALC])) == {
        "read_file", "write_file"
    }
    triple = [tool(f"{verb}_file") for verb in ("read", "write", "delete")]
    assert relevance.asked_for(user("Which file?"), triple) == ()


def test_only_the_last_user_message_counts() -> None:
    messages = [
        {"role": "system", "content": "You can book a flight."},
        {"role": "user", "content": "Book a flight to Oslo"},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Thanks!"},
    ]
    assert relevance.asked_for(messages, [FLIGHT]) == ()
    assert relevance.last_user_text(messages) == "Thanks!"


def test_text_parts_are_read() -> None:
    parts = [{"type": "text", "text": "Book a"}, {"type": "image_url"}, {"type": "text",
                                                                         "text": "flight"}]
    assert relevance.asked_for(user(parts), [FLIGHT]) == ("book_flight",)


@pytest.mark.parametrize(
    "messages, tools",
    [
        ([], [FLIGHT]),
        (user(None), [FLIGHT]),
        (user(42), [FLIGHT]),
        ("not a list", [FLIGHT]),
        (user("book a flight"), ["junk", {"function": "x"}, {"function": {"name": 3}}]),
        (user("book a flight"), []),
    ],
)
def test_bad_input_is_no_evidence_never_an_error(messages: Any, tools: Any) -> None:
    assert relevance.asked_for(messages if isinstance(messages, list) else [], tools) == ()


def test_a_huge_message_or_schema_is_bounded() -> None:
    big = tool("book_flight", "x " * 100_000, **{f"p{i}": {"type": "string"} for i in range(500)})
    assert relevance.asked_for(user("flight " * 200_000), [big]) == ("book_flight",)


def test_expected_problem_names_the_tools() -> None:
    one = relevance.expected_problem(["get_weather"])
    assert (one.kind, one.tool) == ("tool_expected", "get_weather")
    two = relevance.expected_problem(["read_file", "write_file"])
    assert two.tool is None and "'read_file' or 'write_file'" in two.message


def test_only_tools_keeps_the_named_tools() -> None:
    body = {"messages": [], "tools": [FLIGHT, READ, "junk"]}
    assert relevance.only_tools(body, ["read_file"])["tools"] == [READ]
    assert relevance.only_tools(body, ["nope"]) is body
    assert body["tools"] == [FLIGHT, READ, "junk"]  # not mutated


def test_context_an_agent_adds_to_the_user_turn_is_not_the_users_request() -> None:
    # Claude Code sends "say hi" after a <system-reminder> about git commits and files.
    reminder = ("<system-reminder>\nWhen you read a file or write a file, commit with git; "
                "attribution for commits and pull requests...\n</system-reminder>")
    parts = [{"type": "text", "text": reminder}, {"type": "text", "text": "say hi"}]
    assert relevance.asked_for(user(parts), [READ, WRITE]) == ()
    # The user's own words still count, before or after such a block.
    asked = [{"type": "text", "text": reminder}, {"type": "text", "text": "read the file a.txt"}]
    assert relevance.asked_for(user(asked), [READ, WRITE]) == ("read_file",)


def test_an_unclosed_agent_tag_keeps_the_rest_and_stays_linear() -> None:
    text = "<x-y> " * 50_000 + "please book a flight"
    assert relevance.asked_for(user(text[-4000:]), [FLIGHT]) == ("book_flight",)
    assert relevance.last_user_text(user(text)).endswith("please book a flight")

"""Which offered tool a request asks for, from the tools' own text.

A small model offered ``get_weather`` and asked "Check the weather in Cairo" often answers
with a paragraph about Cairo's climate. Under ``tool_choice: auto`` that prose would be the
final answer. This module says, before the model answers, whether the user's last message
clearly asks for what one offered tool (or a few) does; the engine then treats a prose answer
as a failed call (kind ``tool_expected``) and retries it constrained to those tools. Under
``required`` the same ranking picks the tool a constrained retry targets when several are
offered.

The evidence is lexical and comes only from each tool's definition: its name (split at
``_``, ``-`` and camel case), its description, its parameters' names and descriptions and its
enum values, compared with the content words of the user's last message (stop words and
generic verbs removed, a light suffix stemming so that "calculate" meets "calculator").
Words are weighted by where the tool uses them:

* the *object* words of the name, ``weather`` in ``get_weather``, ``flight`` in
  ``book_flight`` (every word of a one-word name): 2, the strongest sign;
* the name's leading verb (``book``, ``read``) and every word of the description, of the
  parameters and of enum values: 1.

A tool is *asked for* when its distinct matched words weigh at least :data:`THRESHOLD` (one
object word, or two lesser words): "read a book" does not ask for ``book_flight``, "book a
flight" does. Only the best-scoring tools count, and only if there are at most
:data:`MAX_TARGETS` of them. Pure functions, linear in the text, no logging of content.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from forge_core.guardrails.validate import Problem
from forge_core.wire import jsonio

THRESHOLD = 2
MAX_TARGETS = 2
"""More tools tied at the top is no clear request for any of them."""
MAX_MESSAGE_CHARS = 4000
"""The part of the user's last message that is read (a request states its intent early)."""
MAX_TOOL_CHARS = 2000
"""The part of each tool's text that is read."""

# English function words, pronouns, auxiliaries and politeness: never evidence.
_STOP_WORDS = """
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing done down during each either
else etc even ever every few for from further had has have having he her here hers herself
him himself his how however i if in into is it its itself just let like may me might mine
more most much must my myself near need needs no nor not now of off on once one only or
other others our ours ourselves out over own please per same shall she should so some such
than that the their theirs them themselves then there these they this those through thus to
too under until up upon us very via want wants was we were what when where whether which
while who whom whose why will with within without would yes yet you your yours yourself
e g eg ie i.e e.g okay ok hey hi hello thanks thank
zero two three four five six seven eight nine ten hundred thousand
"""
_STOP = frozenset(_STOP_WORDS.split())

# Verbs and adjectives that say "do something" without saying what: no evidence of a tool.
_GENERIC_WORDS = """
get gets got getting set sets setting make makes made making give gives given giving tell
tells told show shows showing use uses used using take takes put puts go goes going run
runs return returns returned current currently latest new next top given specific
optional optionally another some value values result item items thing things way
know help try see look find able allow allows provide provides based default true false
null none string number integer boolean object array type list
"""
_GENERIC = frozenset(_GENERIC_WORDS.split())
# "list" is generic as a verb ("list the steps") and too common as a noun; "find" and "look"
# are what every request does. A tool that is *only* such words gets no evidence, by design.

_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-'][A-Za-z0-9]+)*")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SUFFIXES = ("ations", "ation", "ators", "ator", "ates", "ate", "ings", "ing", "ions", "ion",
             "ers", "ors", "ies", "er", "or", "ed", "es", "s", "e", "y")


@lru_cache(maxsize=16384)
def stem(word: str) -> str:
    """A light suffix stripping (``calculator`` / ``calculation`` -> ``calcul``), never below
    three letters, so that only word endings are merged."""
    word = word.lower()
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _words(text: str) -> list[str]:
    """Lower-case words of ``text``: camel case and ``_`` split, hyphenated words also
    joined (``to-do`` -> ``to``, ``do``, ``todo``)."""
    out: list[str] = []
    for token in _TOKEN.findall(_CAMEL.sub(" ", text.replace("_", " "))):
        token = token.lower().replace("'", "-")
        parts = [p for p in token.split("-") if p]
        out += parts
        if len(parts) > 1:
            out.append("".join(parts))
    return out


def _content(words: Iterable[str]) -> set[str]:
    return {
        stem(w) for w in set(words)
        if len(w) >= 2 and not w.isdigit() and w not in _STOP and w not in _GENERIC
    }


@dataclass(frozen=True, slots=True)
class ToolWords:
    """A tool's evidence words (stems) by weight."""

    name: str
    strong: frozenset[str]
    weak: frozenset[str]

    def score(self, message: set[str]) -> int:
        strong = self.strong & message
        return 2 * len(strong) + len((self.weak - strong) & message)


def tool_words(tool: Any) -> ToolWords | None:
    """The evidence words of an OpenAI tool dict (None when it is not a function tool)."""
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return None
    description = function.get("description")
    # Agents send the same tools with every request: their words are computed once.
    parameters = jsonio.dumps(function.get("parameters"), compact=True)
    return _tool_words(
        function["name"], description if isinstance(description, str) else "", parameters
    )


@lru_cache(maxsize=1024)
def _tool_words(name: str, description: str, parameters_json: str) -> ToolWords:
    parts = _words(name)
    # verb_object names (get_weather, book_flight): the object is what the tool is about.
    objects = parts[1:] if len(parts) > 1 else parts
    strong = _content(objects)
    weak_text = [" ".join(parts[:1]) if len(parts) > 1 else "", description[:MAX_TOOL_CHARS]]
    weak_text += list(_parameter_texts(jsonio.loads(parameters_json)))
    weak = _content(_words(" ".join(weak_text)[:MAX_TOOL_CHARS]))
    return ToolWords(name, frozenset(strong), frozenset(weak - strong))


def _parameter_texts(schema: Any, depth: int = 0) -> Iterable[str]:
    """Parameter names, descriptions and string enum values, a few levels deep."""
    if not isinstance(schema, dict) or depth > 3:
        return
    props = schema.get("properties")
    if isinstance(props, dict):
        for key, sub in list(props.items())[:32]:
            yield str(key)
            yield from _parameter_texts(sub, depth + 1)
    if depth and isinstance(schema.get("description"), str):
        yield schema["description"]
    enum = schema.get("enum")
    if isinstance(enum, list):
        yield " ".join(v for v in enum[:32] if isinstance(v, str))
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _parameter_texts(items, depth + 1)


_AGENT_OPEN = re.compile(r"<([a-z]+[-_][a-z_-]+)>")
"""A block an agent wraps around context it adds to the user's turn (Claude Code's
``<system-reminder>``, Cline's ``<environment_details>``, ``<command-name>``...): not the
user's words, so no evidence of what the user asks for."""


def last_user_text(messages: Sequence[Any]) -> str:
    """The user's own text in the last user message ("" when there is none)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                # A part that opens with an agent tag is the agent's context as a whole.
                content = " ".join(
                    p["text"] for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                    and not _AGENT_OPEN.match(p["text"].lstrip())
                )
            return _without_agent_blocks(content) if isinstance(content, str) else ""
    return ""


def _without_agent_blocks(text: str) -> str:
    """``text`` without agent blocks; linear: an opening without its closing tag ends the
    search (everything after it is kept)."""
    kept: list[str] = []
    at = 0
    while (opening := _AGENT_OPEN.search(text, at)) is not None:
        end = text.find(f"</{opening.group(1)}>", opening.end())
        if end < 0:
            break
        kept.append(text[at:opening.start()])
        at = end + len(opening.group(1)) + 3
    kept.append(text[at:])
    return " ".join(kept)


def ranked(messages: Sequence[Any], tools: Sequence[Any]) -> list[tuple[str, int]]:
    """Every offered tool with its evidence score for the last user message, best first."""
    message = _content(_words(last_user_text(messages)[:MAX_MESSAGE_CHARS]))
    if not message:
        return []
    scores = []
    for tool in tools:
        words = tool_words(tool)
        if words is not None:
            scores.append((words.name, words.score(message)))
    scores.sort(key=lambda item: -item[1])
    return scores


def asked_for(messages: Sequence[Any], tools: Sequence[Any]) -> tuple[str, ...]:
    """The offered tools the user's last message clearly asks for: the best-scoring ones at
    or above :data:`THRESHOLD`, at most :data:`MAX_TARGETS` of them; () when none or unclear."""
    scores = ranked(messages, tools)
    if not scores or scores[0][1] < THRESHOLD:
        return ()
    best = tuple(name for name, score in scores if score == scores[0][1])
    return best if len(best) <= MAX_TARGETS else ()


def expected_problem(tools: Sequence[str]) -> Problem:
    """The failure of a prose answer to a request that asks for ``tools``."""
    names = " or ".join(repr(name) for name in tools)
    return Problem(
        "tool_expected",
        tools[0] if len(tools) == 1 else None,
        None,
        f"the request asks for what tool {names} does; call it instead of answering in prose",
    )


def meant_tool(problems: Iterable[Problem], names: Iterable[str]) -> str | None:
    """The offered tool a failed answer meant (the first problem naming one), or None."""
    offered = set(names)
    for problem in problems:
        if problem.kind != "unknown_tool" and problem.tool in offered:
            return problem.tool
    return None


def only_tools(body: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """A copy of ``body`` offering only the tools ``names`` (``body`` itself if none is left)."""
    wanted = set(names)
    tools = [
        t for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
        and t["function"].get("name") in wanted
    ]
    return {**body, "tools": tools} if tools else body

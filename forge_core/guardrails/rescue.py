"""Rescue of tool calls that a model printed as text instead of emitting natively.

Each built-in format is a :class:`RescueParser`; :func:`rescue` strips think blocks, runs the
parsers by ascending ``order`` and the first one that finds a call for a known tool wins.
Built-in parsers also report *where* their markup is, so the prose around it survives.

Two rules hold for every format: a name that is not one of the request's tools is never
rescued, and a JSON value is rescued only when it is entirely made of calls (a list holding
one call and one config object is prose, not a half-executed answer).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

from forge_core.boundary import plugin_code_failed
from forge_core.guardrails.jsonscan import DECODER, DecodeFailed, decode_at
from forge_core.guardrails.linestart import LineStart
from forge_core.guardrails.records import RescuedCall, RescueParser

Hit = tuple[int, int, list[RescuedCall]]
"""``(start, end, calls)``: the calls found in ``text[start:end]``."""

Finder = Callable[[str, frozenset[str]], list[Hit]]

NAME_KEYS = ("name", "tool", "tool_name", "function")
ARGUMENT_KEYS = ("arguments", "parameters", "args", "input")
WRAPPER_KEYS = ("tool_calls", "tool_call", "function_call", "calls")


# --- think blocks ------------------------------------------------------------------------------

_THINK_PAIRS = (("<think>", "</think>"), ("[THINK]", "[/THINK]"))
_THINK_OPEN = LineStart(r"[ \t]*(?:<think>|\[THINK\])")
_THINK_CLOSE = {
    closer: LineStart(rf"[ \t]*{re.escape(closer)}") for _, closer in _THINK_PAIRS
}


def strip_think(text: str) -> str:
    """Remove reasoning blocks: from an opener to its closer (or to the end of the text), and
    everything before an orphan closer (Qwen3-style templates open the block in the prompt).

    Tags count only at the start of a line: reasoning is emitted that way, while a tag inside
    a JSON string (a file's content, say) cannot stand at a line start.
    """
    for opener, closer in _THINK_PAIRS:
        close = _THINK_CLOSE[closer].search(text)
        if close is not None and opener not in text[: close.start()]:
            text = text[close.end() :]
    out: list[str] = []
    pos = 0
    while (match := _THINK_OPEN.search(text, pos)) is not None:
        closer = dict(_THINK_PAIRS)[match.group().strip()]
        end = text.find(closer, match.end())
        out.append(text[pos : match.start()])
        pos = len(text) if end == -1 else end + len(closer)
    out.append(text[pos:])
    return "".join(out)


def think_text(text: str) -> str:
    """The reasoning inside ``text``'s think blocks (what :func:`strip_think` removes), joined
    by blank lines: a model may write its call there and leave the content empty."""
    parts: list[str] = []
    for opener, closer in _THINK_PAIRS:
        close = _THINK_CLOSE[closer].search(text)
        if close is not None and opener not in text[: close.start()]:
            parts.append(text[: close.start()])
            text = text[close.end() :]
    pos = 0
    while (match := _THINK_OPEN.search(text, pos)) is not None:
        closer = dict(_THINK_PAIRS)[match.group().strip()]
        end = text.find(closer, match.end())
        parts.append(text[match.end() : len(text) if end == -1 else end])
        pos = len(text) if end == -1 else end + len(closer)
    return "\n\n".join(part.strip() for part in parts if part.strip())


_OPEN_CLOSE = (
    ("<tool_call>", "</tool_call>"),
    ("<function=", "</function>"),
    ("<|tool_call>", "<tool_call|>"),
)
_LINE_JSON = LineStart(r'[ \t]*(?:```[\w-]*[ \t]*\n[ \t]*)?[\[{][ \t\r\n]*["{]')


def open_at_end(text: str) -> bool:
    """Is ``text`` cut inside call markup: a tag left open, or call JSON that never closes?

    For an answer cut by ``max_tokens``: its last values may be truncated, so it is retried
    rather than rescued.
    """
    for opener, closer in _OPEN_CLOSE:
        start = text.rfind(opener)
        if start != -1 and text.find(closer, start) == -1:
            return True
    starts = list(_LINE_JSON.finditer(text))
    if not starts:
        return False
    brace = starts[-1].start()
    while text[brace] not in "[{":
        brace += 1
    try:
        decode_at(text, brace)
    except (ValueError, RecursionError):
        return True
    return False


# --- call objects ------------------------------------------------------------------------------


def _looks_like_schema(value: dict[str, Any]) -> bool:
    return value.get("type") == "object" and isinstance(value.get("properties"), dict)


def call_from_object(obj: Any, names: Collection[str]) -> RescuedCall | None:
    """The call an object spells, in any common shape, or None.

    Accepts ``{"name"|"tool"|"function": N, "arguments"|"parameters"|"args"|"input": {...}}``
    (arguments may be a JSON string) and OpenAI's ``{"type": "function", "function": {...}}``.
    A tool *definition* (a description, or parameters that are a JSON Schema) is not a call.
    """
    if not isinstance(obj, dict):
        return None
    inner = obj.get("function")
    if isinstance(inner, dict) and obj.get("type", "function") == "function":
        return call_from_object(inner, names)
    name = next((obj[k] for k in NAME_KEYS if isinstance(obj.get(k), str)), None)
    if name is None or name not in names:
        return None
    key = next((k for k in ARGUMENT_KEYS if k in obj), None)
    if key is None:
        # A bare {"name": "tool"} is a call without arguments; anything more is data.
        if "description" in obj or set(obj) - {*NAME_KEYS, "type", "id"}:
            return None
        return RescuedCall(name, {})
    arguments = obj[key]
    if isinstance(arguments, str):
        try:
            arguments = DECODER.decode(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(arguments, dict) or _looks_like_schema(arguments):
        return None
    return RescuedCall(name, arguments)


def calls_in_value(value: Any, names: Collection[str]) -> list[RescuedCall]:
    """Calls spelled by a decoded JSON value: an object, a list of them, or a wrapper such as
    ``{"tool_calls": [...]}``. Empty unless *every* element is a call for a known tool."""
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in WRAPPER_KEYS:
            return calls_in_value(next(iter(value.values())), names)
        call = call_from_object(value, names)
        return [call] if call is not None else []
    if isinstance(value, list) and value:
        calls = [call_from_object(item, names) for item in value]
        if all(call is not None for call in calls):
            return [call for call in calls if call is not None]
    return []


_SEPARATORS = " \t\r\n,;"


class _Next:
    """``text.find(needle, pos)`` for non-decreasing ``pos`` in linear total time: a format
    opened thousands of times but never closed must not cost a full scan per opening."""

    def __init__(self, text: str, needle: str) -> None:
        self.text, self.needle = text, needle
        self.pos, self.at = 0, -2

    def __call__(self, pos: int) -> int:
        if pos < self.pos or self.at == -2 or (self.at != -1 and self.at < pos):
            self.at = self.text.find(self.needle, pos)
        self.pos = pos
        return self.at


def _skip(text: str, pos: int, chars: str = " \t\r\n") -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def call_run(text: str, pos: int, names: Collection[str]) -> tuple[list[RescuedCall], int]:
    """Consecutive call values from ``pos`` (separated by whitespace, commas or semicolons).

    Returns the calls and the end of the last one; ``([], pos)`` if the first is not a call.
    """
    calls: list[RescuedCall] = []
    end = pos
    cursor = _skip(text, pos)
    while cursor < len(text) and text[cursor] in "{[":
        try:
            value, after = decode_at(text, cursor)
        except (ValueError, RecursionError):
            break
        found = calls_in_value(value, names)
        if not found:
            break
        calls += found
        end = after
        cursor = _skip(text, after, _SEPARATORS)
    return calls, end


# --- the formats -------------------------------------------------------------------------------

_FENCE_OPEN = re.compile(r"```[ \t]*[\w.+-]*[ \t]*\r?\n")
_FENCE_CLOSE = re.compile(r"\s*```")


def find_fenced(text: str, names: frozenset[str]) -> list[Hit]:
    """```json (or any info string) fences whose whole body is call JSON."""
    hits: list[Hit] = []
    pos = 0
    while (match := _FENCE_OPEN.search(text, pos)) is not None:
        calls, end = call_run(text, match.end(), names)
        close = _FENCE_CLOSE.match(text, end) if calls else None
        if close is not None or (calls and _skip(text, end) == len(text)):  # or open at the end
            stop = close.end() if close is not None else len(text)
            hits.append((match.start(), stop, calls))
            pos = stop
        else:
            pos = match.end()
    return hits


_TOOL_CALL_OPEN, _TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def find_tagged(text: str, names: frozenset[str]) -> list[Hit]:
    """Hermes/Qwen ``<tool_call>{...}</tool_call>`` (the closing tag may be missing at the end);
    the body may also hold Qwen3-Coder ``<function=...>`` XML."""
    hits: list[Hit] = []
    pos = 0
    next_close, next_open = _Next(text, _TOOL_CALL_CLOSE), _Next(text, _TOOL_CALL_OPEN)
    while (start := text.find(_TOOL_CALL_OPEN, pos)) != -1:
        body_start = start + len(_TOOL_CALL_OPEN)
        cursor = _skip(text, body_start)
        if text.startswith("```", cursor):  # some models fence the JSON inside the tag
            newline = text.find("\n", cursor)
            cursor = newline + 1 if newline != -1 else cursor
        # Decode first: a JSON string may itself contain "<tool_call>" or "</tool_call>".
        calls, end = call_run(text, cursor, names)
        if not calls:
            end = body_start
        close, following = next_close(end), next_open(end)
        closed = close != -1 and (following == -1 or close < following)
        body_end = close if closed else (following if following != -1 else len(text))
        if not calls:
            body = text[body_start:body_end]
            calls = [call for _, _, found in find_xml(body, names) for call in found]
            end = body_end
        if calls:
            stop = close + len(_TOOL_CALL_CLOSE) if closed else end
            hits.append((start, stop, calls))
            pos = stop
        else:
            pos = body_start
    return hits


_MISTRAL = "[TOOL_CALLS]"
_MISTRAL_NAMED = re.compile(
    r"([A-Za-z0-9_.:-]+)[ \t]*(?:\[CALL_ID\][A-Za-z0-9]*)?[ \t]*(\[ARGS\])?[ \t]*(?=\{)"
)


def find_mistral(text: str, names: frozenset[str]) -> list[Hit]:
    """Mistral ``[TOOL_CALLS][{"name": ..., "arguments": {...}}]`` (pre-v11 tokenizers) and
    ``[TOOL_CALLS]name[ARGS]{...}`` / ``[TOOL_CALLS]name{...}`` (v11+, Devstral, Magistral)."""
    hits: list[Hit] = []
    pos = 0
    while (start := text.find(_MISTRAL, pos)) != -1:
        cursor = _skip(text, start + len(_MISTRAL))
        calls, end = call_run(text, cursor, names)
        if not calls:
            calls, end = _mistral_named(text, cursor, names)
        if calls:
            hits.append((start, end, calls))
            pos = end
        else:
            pos = start + len(_MISTRAL)
    return hits


def _mistral_named(text: str, cursor: int, names: frozenset[str]) -> tuple[list[RescuedCall], int]:
    """``name[ARGS]{...}`` calls from ``cursor``; a follow-up call needs its explicit ``[ARGS]``."""
    calls: list[RescuedCall] = []
    end = cursor
    while (match := _MISTRAL_NAMED.match(text, cursor)) is not None:
        if calls and match.group(2) is None:
            break
        try:
            arguments, after = decode_at(text, match.end())
        except (ValueError, RecursionError):
            break
        if match.group(1) not in names or not isinstance(arguments, dict):
            break
        calls.append(RescuedCall(match.group(1), arguments))
        end = after
        cursor = _skip(text, after)
    return calls, end


_PYTHON_TAG = "<|python_tag|>"
_LLAMA_END = re.compile(r"\s*(?:<\|eom_id\|>|<\|eot_id\|>)")
_BUILTIN_CALL = re.compile(r"[A-Za-z_]\w*\.call\(")


def find_python_tag(text: str, names: frozenset[str]) -> list[Hit]:
    """Llama 3.x ``<|python_tag|>{"name": ..., "parameters": {...}}`` (several joined by ``;``)
    and the built-in-tool form ``<|python_tag|>name.call(key="value")``."""
    hits: list[Hit] = []
    pos = 0
    next_newline, next_tag = _Next(text, "\n"), _Next(text, _PYTHON_TAG)
    while (start := text.find(_PYTHON_TAG, pos)) != -1:
        cursor = _skip(text, start + len(_PYTHON_TAG))
        calls, end = call_run(text, cursor, names)
        if not calls and _BUILTIN_CALL.match(text, cursor):
            # The call ends its line; never hand the parser more than one short line.
            line_end = next_newline(cursor)
            line_end = len(text) if line_end == -1 else line_end
            following = next_tag(cursor)
            if following != -1:
                line_end = min(line_end, following)
            call = _python_call(text[cursor:line_end], names) if line_end - cursor < 4096 else None
            calls, end = ([call], line_end) if call is not None else ([], end)
        if calls:
            closing = _LLAMA_END.match(text, end)
            end = closing.end() if closing is not None else end
            hits.append((start, end, calls))
            pos = end
        else:
            pos = start + len(_PYTHON_TAG)
    return hits


def _python_call(source: str, names: frozenset[str]) -> RescuedCall | None:
    """``name.call(k=literal, ...)`` -> a call; anything else (or any error) -> None."""
    source = _LLAMA_END.split(source, maxsplit=1)[0].strip()
    try:
        node = ast.parse(source, mode="eval").body
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "call"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in names
            and not node.args
            and all(k.arg is not None for k in node.keywords)
        ):
            return None
        arguments = {str(k.arg): ast.literal_eval(k.value) for k in node.keywords}
        json.dumps(arguments, allow_nan=False)  # only JSON-representable values
        return RescuedCall(node.func.value.id, arguments)
    except Exception:  # SyntaxError, ValueError, TypeError, RecursionError...
        return None


# A name never holds "<": an attempt stops at the next opening (``[^>\n]+`` ran to the line's
# end from each of a flood's openings).
_FUNCTION_OPEN = re.compile(r"<function=([^<>\n]+)>")
_FUNCTION_CLOSE = "</function>"
_PARAMETER = re.compile(r"<parameter=([^<>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.S)


def find_xml(text: str, names: frozenset[str]) -> list[Hit]:
    """Qwen3-Coder ``<function=NAME><parameter=KEY>VALUE</parameter></function>``; each value
    is JSON-decoded when it is JSON, else kept as a string."""
    hits: list[Hit] = []
    pos = 0
    next_close = _Next(text, _FUNCTION_CLOSE)
    while (match := _FUNCTION_OPEN.search(text, pos)) is not None:
        close = next_close(match.end())
        following = _FUNCTION_OPEN.search(text, match.end())
        if close == -1 or (following is not None and following.start() < close):
            body_end = following.start() if following is not None else len(text)
            stop = body_end
        else:
            body_end, stop = close, close + len(_FUNCTION_CLOSE)
        name = match.group(1).strip()
        if name in names:
            body = text[match.end() : body_end]
            texts = {p.group(1).strip(): _xml_text(p.group(2)) for p in _PARAMETER.finditer(body)}
            arguments = {key: _xml_value(raw) for key, raw in texts.items()}
            hits.append((match.start(), stop, [RescuedCall(name, arguments, texts)]))
        pos = stop if name in names else match.end()
    return hits


def _xml_text(raw: str) -> str:
    # The Qwen3-Coder template writes one newline on each side of a value.
    value = raw[1:] if raw.startswith("\n") else raw
    return value[:-1] if value.endswith("\n") else value


def _xml_value(value: str) -> Any:
    try:
        return DECODER.decode(value.strip()) if value.strip() else value
    except (ValueError, RecursionError):
        return value


_GEMMA_OPEN, _GEMMA_CLOSE, _GEMMA_QUOTE = "<|tool_call>", "<tool_call|>", '<|"|>'
_GEMMA_CALL = re.compile(r"(<\|tool_call>[ \t]*|(?m:^)[ \t]*)call:([A-Za-z0-9_.-]+)\{")
_GEMMA_BARE = re.compile(r"[^,}\]]*")
_GEMMA_KEY = re.compile(r"[ \t\r\n]*([A-Za-z_][\w.-]*)[ \t]*:")
_GEMMA_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
MAX_GEMMA_DEPTH = 32


def find_gemma4(text: str, names: frozenset[str]) -> list[Hit]:
    """Gemma 4 ``<|tool_call>call:NAME{key:<|"|>text<|"|>,n:3}<tool_call|>``; also the bare
    ``call:NAME{...}`` at a line start (a server that strips special tokens). Strings are
    quoted with ``<|"|>``, keys are bare, numbers and booleans are bare (format: vLLM's
    ``gemma4_tool_parser.py``, the Gemma 4 chat template)."""
    hits: list[Hit] = []
    pos = 0
    while (match := _GEMMA_CALL.search(text, pos)) is not None:
        tagged = match.group(1).strip().startswith(_GEMMA_OPEN)
        name = match.group(2)
        try:
            arguments, end = _gemma_object(text, match.end(), 0)
        except (ValueError, IndexError):
            pos = match.end()
            continue
        if name not in names:
            pos = end
            continue
        if tagged:
            after = _skip(text, end)
            end = after + len(_GEMMA_CLOSE) if text.startswith(_GEMMA_CLOSE, after) else end
        hits.append((match.start(), end, [RescuedCall(name, arguments)]))
        pos = end
    return hits


def _gemma_object(text: str, pos: int, depth: int) -> tuple[dict[str, Any], int]:
    """The ``key:value,...}`` body after an opening brace, and the end after its ``}``."""
    if depth > MAX_GEMMA_DEPTH:
        raise ValueError("nested too deeply")
    out: dict[str, Any] = {}
    pos = _skip(text, pos)
    while text[pos] != "}":
        if text.startswith(_GEMMA_QUOTE, pos):
            key, pos = _gemma_string(text, pos)
            pos = _skip(text, pos)
            if text[pos] != ":":
                raise ValueError("expected ':'")
            pos += 1
        else:
            match = _GEMMA_KEY.match(text, pos)
            if match is None:
                raise ValueError("expected a key")
            key, pos = match.group(1), match.end()
        out[key], pos = _gemma_value(text, _skip(text, pos), depth)
        pos = _skip(text, pos)
        if text[pos] == ",":
            pos = _skip(text, pos + 1)
        elif text[pos] != "}":
            raise ValueError("expected ',' or '}'")
    return out, pos + 1


def _gemma_value(text: str, pos: int, depth: int) -> tuple[Any, int]:
    if text.startswith(_GEMMA_QUOTE, pos):
        return _gemma_string(text, pos)
    if text[pos] == "{":
        return _gemma_object(text, pos + 1, depth + 1)
    if text[pos] == "[":
        items: list[Any] = []
        pos = _skip(text, pos + 1)
        while text[pos] != "]":
            item, pos = _gemma_value(text, pos, depth + 1)
            items.append(item)
            pos = _skip(text, pos)
            if text[pos] == ",":
                pos = _skip(text, pos + 1)
            elif text[pos] != "]":
                raise ValueError("expected ',' or ']'")
        return items, pos + 1
    match = _GEMMA_BARE.match(text, pos)
    raw = match.group().strip() if match is not None else ""
    if not raw or "\n" in raw:
        raise ValueError("expected a value")
    end = match.end() if match is not None else pos
    if raw in ("true", "false"):
        return raw == "true", end
    if raw == "null":
        return None, end
    if _GEMMA_NUMBER.fullmatch(raw):
        return json.loads(raw), end
    return raw, end


def _gemma_string(text: str, pos: int) -> tuple[str, int]:
    start = pos + len(_GEMMA_QUOTE)
    end = text.find(_GEMMA_QUOTE, start)
    if end == -1:
        raise ValueError("unterminated string")
    return text[start:end], end + len(_GEMMA_QUOTE)


_JSON_START = re.compile(r'\{\s*"|\[\s*\{')
MAX_JSON_FAILURES = 500


JSON_SCAN_FACTOR = 4
"""Failed decodes in :func:`find_json` may scan the text about this many times in all."""


def _failed_scan(text: str, start: int, exc: BaseException) -> int:
    """How far a failed ``raw_decode`` from ``start`` read (to the end when unknown)."""
    if isinstance(exc, DecodeFailed) and not exc.msg.startswith("Unterminated"):
        return max(1, exc.pos - start)
    return len(text) - start


def find_json(text: str, names: frozenset[str]) -> list[Hit]:
    """Bare JSON call objects or lists of them anywhere in prose (fenced or not).

    Candidates are ``{"`` and ``[{``; each is decoded with the JSON scanner, which respects
    strings and nesting. A value that decodes but is not a call is skipped whole, so an object
    nested inside a config example is never rescued.
    """
    hits: list[Hit] = []
    pos = 0
    failures = 0
    # Failed decodes overlap (each candidate inside an unclosed value is tried again), so
    # their cost is budgeted: linear in the text, however many candidates it holds.
    budget = JSON_SCAN_FACTOR * len(text) + 65536
    while (match := _JSON_START.search(text, pos)) is not None:
        try:
            value, end = decode_at(text, match.start())
        except (ValueError, RecursionError) as exc:
            failures += 1
            budget -= _failed_scan(text, match.start(), exc)
            if failures > MAX_JSON_FAILURES or budget < 0:
                break  # junk, not an answer
            pos = match.start() + 1
            continue
        calls = calls_in_value(value, names)
        if calls:
            hits.append((match.start(), end, calls))
        pos = end
    return hits


# --- parsers and the driver --------------------------------------------------------------------


class LocatingParse:
    """A parse function that can also say where its calls are (``locate``).

    Calling it gives the plain :class:`RescueParser` contract (calls only, never raises).
    """

    def __init__(self, find: Finder) -> None:
        self.locate = find
        self.__doc__ = find.__doc__

    def __call__(self, text: str, tool_names: Collection[str]) -> list[RescuedCall]:
        try:
            hits = self.locate(text, frozenset(tool_names))
            return [call for _, _, calls in hits for call in calls]
        except Exception:
            return []


def _parser(name: str, find: Finder, markers: tuple[str, ...], order: int) -> RescueParser:
    return RescueParser(name=name, parse=LocatingParse(find), markers=markers, order=order)


BUILTIN_PARSERS: tuple[RescueParser, ...] = (
    _parser("fenced-json", find_fenced, ("```",), 10),
    _parser("hermes", find_tagged, ("<tool_call>",), 20),
    _parser("mistral", find_mistral, ("[TOOL_CALLS]",), 30),
    _parser("llama3", find_python_tag, ("<|python_tag|>",), 40),
    _parser("qwen-xml", find_xml, ("<function=",), 50),
    _parser("gemma4", find_gemma4, ("<|tool_call>",), 60),
    _parser("json", find_json, ("{", "["), 90),
)


def all_markers(parsers: Sequence[RescueParser]) -> tuple[str, ...]:
    """Every marker of ``parsers``, deduplicated, in a stable order."""
    return tuple(sorted({m for p in parsers for m in p.markers if m}))


def _usable(call: Any, names: frozenset[str]) -> bool:
    if not isinstance(call, RescuedCall) or call.name not in names:
        return False
    if not isinstance(call.arguments, dict):
        return False
    try:
        json.dumps(call.arguments, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _run(parser: RescueParser, text: str, names: frozenset[str]) -> list[Hit]:
    """The parser's hits with unusable calls dropped; a parser that raises finds nothing
    (and is noted and logged by the error boundary)."""
    try:
        locate = getattr(parser.parse, "locate", None)
        if locate is not None:
            raw = [(s, e, list(calls)) for s, e, calls in locate(text, names)]
        else:  # a plugin parser that cannot say where its markup is: no prose survives
            raw = [(0, len(text), list(parser.parse(text, names)))]
        hits = [(s, e, [c for c in calls if _usable(c, names)]) for s, e, calls in raw]
        return [hit for hit in hits if hit[2]]
    except Exception as exc:
        origin = getattr(parser.parse, "__module__", None) or "?"
        plugin_code_failed("rescue", parser.name, origin, exc)
        return []


def rescue(
    text: str, tool_names: Collection[str], parsers: Sequence[RescueParser]
) -> tuple[list[RescuedCall], str]:
    """Find tool calls printed in ``text``: ``(calls, remaining prose)``.

    Think blocks are removed first; parsers run by ascending ``order`` and the first that finds
    a call for a known tool wins. The prose is the think-free text with that parser's markup cut
    out, stripped (possibly ""); with no calls it is the whole think-free text. Never raises.
    """
    calls, prose, _ = rescue_by(text, tool_names, parsers)
    return calls, prose


def rescue_by(
    text: str, tool_names: Collection[str], parsers: Sequence[RescueParser]
) -> tuple[list[RescuedCall], str, str | None]:
    """Like :func:`rescue`, plus the name of the parser that found the calls (None: none)."""
    names = frozenset(tool_names)
    clean = strip_think(text)
    if names:
        for parser in sorted(parsers, key=lambda p: p.order):
            hits = _run(parser, clean, names)
            if hits:
                calls = [call for _, _, found in hits for call in found]
                prose = _cut(clean, [_widen(clean, s, e) for s, e, _ in hits])
                return calls, prose, parser.name
    return [], clean.strip(), None


_FENCE_BEFORE = re.compile(r"```[\w.+-]*[ \t]*\r?\n\s*\Z")
_FENCE_AFTER = re.compile(r"\s*```")


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    """Include a code fence wrapped around the markup (```xml <tool_call>...``` leaves no
    empty fence behind in the prose)."""
    before = _FENCE_BEFORE.search(text, max(0, start - 40), start)
    after = _FENCE_AFTER.match(text, end)
    if before is not None and after is not None:
        return before.start(), after.end()
    return start, end


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` without ``spans``; where a cut joins two pieces, keep a paragraph break if the
    markup stood on its own lines and a space otherwise."""
    pieces: list[str] = []
    pos = 0
    for start, end in sorted(spans):
        pieces.append(text[pos : max(pos, start)])
        pos = max(pos, end)
    pieces.append(text[pos:])
    out = ""
    for piece in pieces:
        if not piece.strip():
            continue
        if not out:
            out = piece
            continue
        left, right = out.rstrip(), piece.lstrip()
        gap = out[len(left) :] + piece[: len(piece) - len(right)]
        out = left + ("\n\n" if "\n" in gap else " ") + right
    return out.strip()

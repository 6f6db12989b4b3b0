"""A compact GBNF grammar for one tool call: ``{"name":"<tool>","arguments":{...}}``.

llama-server's own JSON-schema conversion allows free whitespace between tokens, and small
models use it: they indent, spending tokens until ``max_tokens`` cuts the call. This grammar
admits no whitespace outside strings, arrays of at most :data:`ARRAY_CAP` items when the schema
sets no ``maxItems`` (runaway lists of one repeated string were seen), and the properties in
the schema's order. It covers the JSON Schema subset tools use (types, properties, required,
enum, const, anyOf/oneOf, items, min/max length and items, integer ranges of up to
:data:`INTEGER_SPAN` values, a non-negative minimum); ``pattern``, ``format`` and other numeric
bounds are left to forge's validation after the answer. A schema using anything else
(``$ref``, ``allOf``, ``not``, ...) gets no grammar: :func:`call_grammar` returns None and the
caller falls back to llama-server's JSON-schema constraint.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

ARRAY_CAP = 16
INTEGER_SPAN = 64
"""Integer ranges up to this size are spelled out, so the grammar enforces the bounds."""
MAX_DEPTH = 8
_UNSUPPORTED = ("$ref", "allOf", "not", "if", "then", "else", "dependentSchemas",
                "patternProperties", "prefixItems", "$defs", "definitions")

_BASE = {
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": r'"\"" char* "\""',
    "integer": r'"-"? ("0" | [1-9] [0-9]{0,15})',
    "number": r'integer ("." [0-9]+)? ([eE] [-+]? [0-9]+)?',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
    "value": r'object | array | string | number | boolean | null',
    "object": r'"{" (string ":" value ("," string ":" value)*)? "}"',
    "array": r'"[" (value ("," value)*)? "]"',
}
_BASE_DEPENDS = {
    "string": ["char"], "number": ["integer"],
    "value": ["object", "array", "string", "number", "boolean", "null"],
    "object": ["string", "value"], "array": ["value"],
}


_AVOIDABLE = re.compile(r"[A-Za-z0-9_ .-]{1,64}")
"""Placeholder words the grammar can exclude (tool and parameter names are of this kind)."""
_END = ""  # marks a whole word in the trie of avoided values
_ESCAPE = r'"\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
AFTER_AVOIDED = 48
"""Characters a string may go on for once it holds a whole avoided word: a model stopped at
the end of ``web_search`` otherwise ran on until ``max_tokens`` cut the call."""


class Unsupported(Exception):
    """The schema uses a keyword this grammar does not express."""


def literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Grammar:
    def __init__(
        self, tool_names: Sequence[str] = (), mentioned: Callable[[str], bool] | None = None
    ) -> None:
        self.tool_names = tuple(tool_names)
        self.mentioned = mentioned
        """Placeholders are avoided when set: a string argument may not be exactly a tool name
        or its parameter's own name, unless the conversation has that value."""
        self.rules: dict[str, str] = {}
        self._by_body: dict[str, str] = {}
        self._base: set[str] = set()

    def base(self, name: str) -> str:
        if name not in self._base:
            self._base.add(name)
            for dependency in _BASE_DEPENDS.get(name, []):
                self.base(dependency)
        return name

    def rule(self, hint: str, body: str) -> str:
        if body in self._by_body:
            return self._by_body[body]
        stem = re.sub(r"[^a-zA-Z0-9]+", "-", hint).strip("-").lower() or "r"
        name, n = stem, 1
        while name in self.rules or name in _BASE:
            n += 1
            name = f"{stem}-{n}"
        self.rules[name] = body
        self._by_body[body] = name
        return name

    def text(self, root: str) -> str:
        lines = [f"root ::= {root}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        lines += [f"{name} ::= {_BASE[name]}" for name in _BASE if name in self._base]
        return "\n".join(lines) + "\n"

    # --- schemas ---------------------------------------------------------------------------

    def value(self, schema: Any, hint: str, depth: int = 0, key: str = "") -> str:
        if depth > MAX_DEPTH:
            raise Unsupported("nested too deeply")
        if schema is True or schema == {} or schema is None:
            return self.base("value")
        if not isinstance(schema, dict):
            raise Unsupported("schema is not an object")
        if any(key in schema for key in _UNSUPPORTED):
            raise Unsupported("unsupported keyword")
        if "const" in schema:
            return literal(_json(schema["const"]))
        if isinstance(schema.get("enum"), list):
            if not schema["enum"]:
                raise Unsupported("empty enum")
            return "(" + " | ".join(literal(_json(v)) for v in schema["enum"]) + ")"
        parameter = key
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list):
                rest = {k: v for k, v in schema.items() if k != key}
                options = [
                    self.value({**rest, **sub} if isinstance(sub, dict) else sub,
                               f"{hint}-{i}", depth + 1, parameter)
                    for i, sub in enumerate(schema[key])
                ]
                return self.rule(hint, " | ".join(options)) if options else self.base("value")
        kind = schema.get("type")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind is None:
            return self.base("value")
        if isinstance(kind, list):
            options = [
                self.value({**schema, "type": k}, f"{hint}-{k}", depth + 1, parameter)
                for k in kind
            ]
            return self.rule(hint, " | ".join(options))
        if kind == "string":
            return self._string(schema, parameter)
        if kind == "integer":
            return self._integer(schema)
        if kind in ("number", "boolean", "null"):
            return self.base(kind)
        if kind == "array":
            return self._array(schema, hint, depth, parameter)
        if kind == "object":
            return self._object(schema, hint, depth)
        raise Unsupported(f"type {kind!r}")

    def _string(self, schema: dict[str, Any], parameter: str = "") -> str:
        low = schema.get("minLength")
        high = schema.get("maxLength")
        low = low if isinstance(low, int) and low > 0 else 0
        high = high if isinstance(high, int) and high >= low else None
        if high is None and low <= 1:
            avoided = self._avoided(parameter)
            if avoided:
                return self._string_avoiding(avoided, nonempty=low == 1)
        if not low and high is None:
            return self.base("string")
        self.base("char")
        repeat = f"{{{low},{high}}}" if high is not None else f"{{{low},}}"
        return self.rule(f"string-{low}-{high}", f'"\\"" char{repeat} "\\""')

    def _avoided(self, parameter: str) -> frozenset[str]:
        """The whole values a string argument of ``parameter`` may not take (see
        :attr:`mentioned`), with ``_`` also written as a space."""
        if self.mentioned is None:
            return frozenset()
        words = {*self.tool_names, parameter} - {""}
        variants = {v for w in words for v in (w, w.replace("_", " "))}
        return frozenset(
            v for v in variants if _AVOIDABLE.fullmatch(v) and not self.mentioned(v)
        )

    def _string_avoiding(self, words: frozenset[str], nonempty: bool) -> str:
        """A JSON string that is none of ``words`` (nor empty, if ``nonempty``): a trie of
        the words where every node may also end the string or leave the trie."""
        self.base("char")
        trie: dict[str, Any] = {}
        for word in sorted(words):
            node = trie
            for ch in word:
                node = node.setdefault(ch, {})
            node[_END] = {}
        return self.rule("avoid", f'"\\"" {self._trie_node(trie, nonempty)}')

    def _trie_node(self, node: dict[str, Any], nonempty: bool) -> str:
        children = sorted(ch for ch in node if ch != _END)
        options = [] if _END in node or nonempty else ['"\\""']
        options += [f"{literal(ch)} {self._trie_node(node[ch], False)}" for ch in children]
        others = "".join("\\" + ch if ch in "]\\^-" else ch for ch in children)
        leave = f'([^"\\\\\\x7F\\x00-\\x1F{others}] | {_ESCAPE})'
        rest = f"char{{0,{AFTER_AVOIDED - 1}}}" if _END in node else "char*"
        options.append(f'{leave} {rest} "\\""')
        return self.rule("avoid", " | ".join(options))

    def _integer(self, schema: dict[str, Any]) -> str:
        """Small bounded ranges as literals (the models wrote ``"days": 10`` for a maximum
        of 7 and repeated it after the correction); a minimum >= 0 forbids the sign."""
        low, high = _bound(schema, "minimum", "exclusiveMinimum", 1), _bound(
            schema, "maximum", "exclusiveMaximum", -1
        )
        if low is not None and high is not None and 0 <= high - low < INTEGER_SPAN:
            return "(" + " | ".join(literal(str(n)) for n in range(low, high + 1)) + ")"
        if low is not None and low >= 0:
            return self.rule("natural", '"0" | [1-9] [0-9]{0,15}')
        return self.base("integer")

    def _array(self, schema: dict[str, Any], hint: str, depth: int, parameter: str = "") -> str:
        item = self.value(schema.get("items", True), f"{hint}-item", depth + 1, parameter)
        low = schema.get("minItems")
        high = schema.get("maxItems")
        low = low if isinstance(low, int) and low > 0 else 0
        high = min(high, ARRAY_CAP) if isinstance(high, int) else ARRAY_CAP
        high = max(high, low, 1)
        more = f'("," {item}){{{max(low - 1, 0)},{high - 1}}}'
        body = f'"[" {item} {more} "]"' if low else f'"[" ({item} {more})? "]"'
        return self.rule(hint, body)

    def _object(self, schema: dict[str, Any], hint: str, depth: int) -> str:
        properties = schema.get("properties")
        if not isinstance(properties, dict) or not properties:
            return self.base("object")
        required = set(schema.get("required") or [])
        pairs = [
            (f"{literal(_json(key) + ':')} {self.value(sub, f'{hint}-{key}', depth + 1, key)}",
             key in required)
            for key, sub in properties.items()
        ]
        # head(i): properties i.. when none was written yet; tail(i): after one was (","-led).
        head, tail = "", ""
        for position in range(len(pairs) - 1, -1, -1):
            pair, needed = pairs[position]
            after = f" {tail}" if tail else ""
            if needed:
                new_tail = f'"," {pair}{after}'
                new_head = f"{pair}{after}"
            else:
                new_tail = f'("," {pair})?{after}'
                new_head = f"{pair}{after}" + (f" | {head}" if head else "")
                if not head:
                    new_head = f"({new_head})?"
            tail = self.rule(f"{hint}-tail-{position}", new_tail)
            head = self.rule(f"{hint}-head-{position}", new_head)
        return self.rule(hint, f'"{{" {head} "}}"')


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str, step: int) -> int | None:
    """The integer bound a schema sets (``exclusive`` moved by ``step``), or None."""
    for key, shift in ((inclusive, 0), (exclusive, step)):
        value = schema.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            edge = math.ceil(value) if step > 0 else math.floor(value)
            if shift and edge == value:
                edge += shift
            return int(edge)
    return None


def call_grammar(
    tools: Sequence[dict[str, Any]],
    tool_names: Sequence[str] = (),
    mentioned: Callable[[str], bool] | None = None,
) -> str | None:
    """A grammar admitting exactly one compact call of one of ``tools``; None if a schema
    cannot be expressed (see the module docstring).

    With ``mentioned`` (does the conversation contain this value?), string arguments cannot be
    placeholders: exactly one of ``tool_names`` or their parameter's own name, unless
    mentioned. forge rejects those after the answer anyway; a small model repeated them after
    every correction.
    """
    grammar = _Grammar(tool_names, mentioned)
    calls = []
    try:
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                continue
            name = function["name"]
            parameters = function.get("parameters") or {"type": "object"}
            arguments = grammar.value(parameters, f"args-{name}")
            opening = literal('{"name":' + _json(name) + ',"arguments":')
            calls.append(grammar.rule(f"call-{name}", f'{opening} {arguments} "}}"'))
    except Unsupported:
        return None
    if not calls:
        return None
    return grammar.text(" | ".join(calls))

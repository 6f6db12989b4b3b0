"""JSON Schema validators that a client's schema cannot turn against forge.

A tool schema comes from the client and the arguments from the model; both are untrusted.
Three things in stock ``jsonschema`` would let them stall or probe the server:

* ``$ref`` retrieval: an unknown URI is fetched (``urlopen``, no timeout, on the event loop),
  so ``http://...`` and ``file:///...`` refs mean SSRF and local file reads. Here validators
  get a registry holding only the JSON Schema meta-schemas and no retrieval at all; a schema
  with a ``$ref`` that leaves the schema itself is reported by :func:`outside_ref` and is then
  not enforced (nothing is ever fetched or read).
* Backtracking regexes: ``pattern`` and ``patternProperties`` run with Python's ``re``, where
  ``^(a+)+$`` takes seconds per extra character. Here they run on RE2 (linear time). A regex
  RE2 cannot run (lookaround, backreferences) is not enforced: ``pattern`` accepts any string;
  a schema with such a ``patternProperties`` key is not enforced at all (:func:`slow_regex`).
* Exponential work: ``$ref`` chains can expand a small schema into billions of checks (each
  ``$defs`` entry an ``allOf`` of two refs to the previous one). Every keyword evaluation is
  counted; past :data:`MAX_EVALUATIONS` for one call, validation stops with
  :class:`TooComplex` and the call's schema is treated as not enforced.

``format`` is never asserted (no format checker), so ``format: regex`` compiles nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any
from urllib.parse import urldefrag, urljoin

import re2
from jsonschema import validators
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema_specifications import REGISTRY as META_SCHEMAS

MAX_EVALUATIONS = 100_000
"""Keyword evaluations allowed for one call (a few seconds of CPU at most, off the loop)."""

_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
"""Keywords whose values are data, not schemas: a ``$ref`` key there is not a reference."""

_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
_META_URIS = frozenset(uri.rstrip("#") for uri in META_SCHEMAS)

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # an unsupported pattern is expected input, not a log line


class TooComplex(Exception):
    """Validating one call needed more than :data:`MAX_EVALUATIONS` keyword evaluations."""


# --- regexes -----------------------------------------------------------------------------------


def _ecma_to_re2(pattern: str) -> str:
    r"""ECMA-262 escapes RE2 spells differently: ``\uHHHH`` and ``\u{H...}`` -> ``\x{H...}``."""
    if "\\u" not in pattern:
        return pattern
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n:
            if pattern[i + 1] == "u":
                if pattern.startswith("{", i + 2) and (end := pattern.find("}", i + 3)) != -1:
                    out.append("\\x" + pattern[i + 2 : end + 1])
                    i = end + 1
                    continue
                digits = pattern[i + 2 : i + 6]
                if len(digits) == 4 and all(c in "0123456789abcdefABCDEF" for c in digits):
                    out.append("\\x{" + digits + "}")
                    i += 6
                    continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


@lru_cache(maxsize=2048)
def linear_regex(pattern: str) -> Callable[[str], Any] | None:
    """A linear-time ``search`` for an ECMA-262 ``pattern``, or None if RE2 cannot run it."""
    try:
        return re2.compile(_ecma_to_re2(pattern), _RE2_OPTIONS).search
    except Exception:  # re2.error, or a pattern too big for RE2's memory bound
        return None


def regex_search(pattern: str, text: str) -> bool | None:
    """Whether ``pattern`` matches somewhere in ``text``; None when it cannot be checked."""
    search = linear_regex(pattern)
    if search is None:
        return None
    try:
        return search(text) is not None
    except UnicodeEncodeError:  # a lone surrogate: RE2 works on UTF-8
        return search(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")) is not None


def _matches_any(patterns: Any, key: str) -> bool:
    return isinstance(patterns, dict) and any(regex_search(p, key) for p in patterns)


# --- keywords, RE2 edition ---------------------------------------------------------------------


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    checkable = validator.is_type(instance, "string") and isinstance(pattern, str)
    if checkable and regex_search(pattern, instance) is False:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if regex_search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, extra: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = schema.get("patternProperties")
    extras = [k for k in instance if k not in declared and not _matches_any(patterns, k)]
    if validator.is_type(extra, "object"):
        for key in extras:
            yield from validator.descend(instance[key], extra, path=key)
    elif extra is False and extras:
        names = ", ".join(repr(key) for key in sorted(extras))
        yield ValidationError(f"additional properties are not allowed ({names} unexpected)")


def _not_enforced(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[Any]:
    return iter(())


# --- evaluation budget -------------------------------------------------------------------------


class _Budget(threading.local):
    left = MAX_EVALUATIONS


_BUDGET = _Budget()


def reset_budget() -> None:
    """Start counting keyword evaluations for one call."""
    _BUDGET.left = MAX_EVALUATIONS


def _counted(keyword: Callable[..., Any]) -> Callable[..., Any]:
    def evaluate(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _BUDGET.left -= 1
        if _BUDGET.left < 0:
            raise TooComplex("validation needs too many steps")
        return keyword(validator, value, instance, schema)

    return evaluate


@lru_cache(maxsize=32)
def safe_class(cls: type[Validator], unevaluated: bool) -> type[Validator]:
    """``cls`` with RE2 regex keywords and counted evaluations.

    ``unevaluated`` False drops ``unevaluatedProperties`` (used when the schema also has
    ``patternProperties``: jsonschema evaluates those with Python's ``re`` there).
    """
    keywords: dict[str, Callable[..., Any]] = dict(cls.VALIDATORS)
    keywords["pattern"] = _pattern
    keywords["patternProperties"] = _pattern_properties
    keywords["additionalProperties"] = _additional_properties
    if not unevaluated and "unevaluatedProperties" in keywords:
        keywords["unevaluatedProperties"] = _not_enforced
    counted = {name: _counted(keyword) for name, keyword in keywords.items()}
    return validators.extend(cls, counted)


def build(cls: type[Validator], schema: Any, unevaluated: bool) -> Validator:
    """A validator for ``schema`` that resolves refs only inside it and never retrieves."""
    return safe_class(cls, unevaluated)(schema, registry=META_SCHEMAS)


# --- schema inspection -------------------------------------------------------------------------


def _nodes(schema: Any) -> Iterator[tuple[dict[str, Any], str]]:
    """Every schema object in ``schema`` with its base URI (``$id`` aware), iteratively, so a
    deeply nested schema costs no recursion."""
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        node, base = stack.pop()
        if isinstance(node, list):
            stack.extend((item, base) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        for key in ("$id", "id"):
            if isinstance(node.get(key), str):
                base = urljoin(base, node[key])
                break
        yield node, base
        stack.extend((value, base) for key, value in node.items() if key not in _DATA_KEYWORDS)


def inspect(schema: Any) -> tuple[str, bool]:
    """Why ``schema`` cannot be enforced safely (``""`` if it can), and whether it needs
    ``unevaluatedProperties`` dropped (see :func:`safe_class`)."""
    ids = {""}
    refs: list[str] = []
    pattern_properties = unevaluated = False
    for node, base in _nodes(schema):
        ids.add(urldefrag(base).url)
        for key in _REF_KEYWORDS:
            if isinstance(node.get(key), str):
                refs.append(urljoin(base, node[key]))
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict):
            pattern_properties = True
            if any(linear_regex(p) is None for p in patterns if isinstance(p, str)):
                return "a patternProperties regex needs backtracking; not enforced", False
        unevaluated = unevaluated or "unevaluatedProperties" in node
    for ref in refs:
        document = urldefrag(ref).url
        if document not in ids and document.rstrip("#") not in _META_URIS:
            # The URI itself stays out of notes and logs: it may carry credentials.
            return "a $ref points outside the schema (never fetched); not enforced", False
    return "", not (pattern_properties and unevaluated)

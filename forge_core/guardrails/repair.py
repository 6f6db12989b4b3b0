"""Repair of tool-call arguments before a retry: a backend round trip saved when the fix is sure.

Two repairs, each made only when it cannot change what the model meant:

* **JSON syntax** (``json`` note): single quotes, trailing commas, unquoted keys, Python
  literals, a missing closing brace. Done by the maintained ``json-repair`` library, then
  checked: an answer cut by ``max_tokens`` is never repaired (its last value may be
  truncated), nor text ending inside a string, nor a repair that drops any word or number
  of the original or invents an empty value.
* **Scalar types per the schema** (``types`` note): ``"5"`` -> ``5`` for an integer,
  ``"2.5"`` -> ``2.5`` for a number, ``"true"`` -> ``true`` for a boolean, a JSON-encoded
  object or array given as a string -> that value, a lone value -> a one-element array.
  Only where the schema names exactly one type; a string stays a string.

A repaired call is used only if it then validates completely; otherwise the call is left as
the model wrote it and the usual retry corrects it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import json_repair

from forge_core.guardrails.validate import ToolIndex, decode_arguments, validate_call
from forge_core.turns import ToolCall

MAX_REPAIR_CHARS = 64 * 1024
"""Longer argument texts are not repaired: the repairer is not linear-time on junk."""

_WORD = re.compile(r"\w+")
_LITERALS = frozenset({"true", "false", "null", "True", "False", "None"})
_INTEGER = re.compile(r"[+-]?\d{1,30}")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def repair_calls(calls: Sequence[ToolCall], index: ToolIndex, *, truncated: bool) -> list[str]:
    """Repair each invalid call in place where a sure repair makes it valid.

    Returns the kinds of repair made (``json``, ``types``), for the ``repaired:`` note.
    """
    kinds: list[str] = []
    for position, call in enumerate(calls):
        if call.name not in index or not validate_call(call, index, position):
            continue
        fixed = repaired_arguments(call.arguments, index.parameters(call.name), truncated)
        if fixed is None:
            continue
        arguments, made = fixed
        candidate = ToolCall(call.id, call.name, json.dumps(arguments, ensure_ascii=False))
        if validate_call(candidate, index, position):
            continue
        call.arguments = candidate.arguments
        kinds += [kind for kind in made if kind not in kinds]
    return kinds


def repaired_arguments(
    text: str, schema: Any, truncated: bool = False
) -> tuple[dict[str, Any], list[str]] | None:
    """The arguments ``text`` surely means and the repairs made, or None (nothing sure)."""
    made: list[str] = []
    try:
        value = decode_arguments(text)
    except (ValueError, RecursionError):
        value = repair_json_text(text) if not truncated else None
        if value is None:
            return None
        made.append("json")
    if not isinstance(value, dict):
        return None
    coerced, changed = coerce(value, schema)
    if changed:
        made.append("types")
    return (coerced, made) if made else None


def repair_json_text(text: str) -> Any:
    """The value of malformed JSON ``text`` when a repair is sure not to change it, else None."""
    if len(text) > MAX_REPAIR_CHARS or _ends_in_string(text):
        return None
    try:
        value = json_repair.repair_json(text, return_objects=True, skip_json_loads=True)
    except Exception:  # the repairer's own failure: nothing sure
        return None
    if value in ("", None) or not _keeps_content(text, value):
        return None
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return value


def _ends_in_string(text: str) -> bool:
    """Does ``text`` end inside a quoted string (``"`` or ``'``)? Then a value was cut."""
    quote: str | None = None
    escaped = False
    for char in text:
        if quote is None:
            if char in "\"'":
                quote = char
        elif escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == quote:
            quote = None
    return quote is not None


def _keeps_content(text: str, value: Any) -> bool:
    """Every word and number of ``text`` survives in ``value``, and no empty value is new."""
    leaves: list[str] = []
    _collect(value, leaves)
    kept = "\x00".join(leaves)
    words = [w for w in _WORD.findall(text) if w not in _LITERALS]
    if any(word not in kept for word in words):
        return False
    invented = sum(1 for leaf in leaves if leaf == "")
    return invented <= text.count('""') + text.count("''")


def _collect(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            out.append(str(key))
            _collect(item, out)
    elif isinstance(value, list):
        for item in value:
            _collect(item, out)
    elif isinstance(value, str):
        out.append(value)
    elif value is not None and not isinstance(value, bool):
        out.append(json.dumps(value))


# --- scalar coercion per schema ----------------------------------------------------------------


def coerce(value: Any, schema: Any) -> tuple[Any, bool]:
    """``value`` with unambiguous type mismatches fixed per ``schema``; and whether any was."""
    if not isinstance(schema, dict):
        return value, False
    kind = schema.get("type")
    if kind == "object" or (kind is None and isinstance(schema.get("properties"), dict)):
        return _coerce_object(value, schema)
    if kind == "array":
        return _coerce_array(value, schema)
    if isinstance(kind, str):
        return _coerce_scalar(value, kind)
    return value, False


def _coerce_object(value: Any, schema: dict[str, Any]) -> tuple[Any, bool]:
    if isinstance(value, str):
        decoded = _decoded(value)
        if isinstance(decoded, dict):
            return coerce(decoded, schema)[0], True
    properties = schema.get("properties")
    if not isinstance(value, dict) or not isinstance(properties, dict):
        return value, False
    out: dict[str, Any] = {}
    changed = False
    for key, item in value.items():
        out[key], fixed = coerce(item, properties.get(key))
        changed = changed or fixed
    return out, changed


def _coerce_array(value: Any, schema: dict[str, Any]) -> tuple[Any, bool]:
    items = schema.get("items")
    if not isinstance(value, list):
        decoded = _decoded(value) if isinstance(value, str) else None
        if isinstance(decoded, list):
            return coerce(decoded, schema)[0], True
        if value is None:
            return value, False
        item, _ = coerce(value, items)
        return [item], True
    out, changed = [], False
    for item in value:
        fixed_item, fixed = coerce(item, items)
        out.append(fixed_item)
        changed = changed or fixed
    return out, changed


def _coerce_scalar(value: Any, kind: str) -> tuple[Any, bool]:
    if not isinstance(value, str):
        return value, False
    text = value.strip()
    if kind == "integer" and _INTEGER.fullmatch(text):
        return int(text), True
    if kind == "number" and _NUMBER.fullmatch(text):
        number = float(text)
        if math.isfinite(number):
            return (int(text) if _INTEGER.fullmatch(text) else number), True
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true", True
    return value, False


def _decoded(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def typed_text_values(
    arguments: dict[str, Any], texts: dict[str, str] | None, schema: Any
) -> dict[str, Any]:
    """Values a format writes as bare text (``<parameter=k>42</parameter>``), typed per schema.

    The parsers decode such text as JSON when it is JSON; a parameter the schema declares a
    string gets its text back unchanged (``"42"`` stays ``"42"``).
    """
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not texts or not isinstance(properties, dict):
        return arguments
    out = dict(arguments)
    for key, text in texts.items():
        declared = properties.get(key)
        if isinstance(declared, dict) and _declares_string(declared) and key in out:
            out[key] = text
    return out


def _declares_string(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "string":
        return True
    enum = schema.get("enum")
    return isinstance(enum, list) and bool(enum) and all(isinstance(v, str) for v in enum)

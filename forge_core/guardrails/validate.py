"""Validation of tool calls against the request's tools and their JSON Schemas.

Everything here is pure: no I/O (validators never fetch a ``$ref``, see
:mod:`forge_core.guardrails.safe_schema`), no logging of argument values. A :class:`Problem`
carries one short sentence that is precise enough to show the model in a corrective retry.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from forge_core.guardrails import safe_schema
from forge_core.guardrails.placeholders import placeholder_messages
from forge_core.turns import AssistantTurn, ToolCall

log = logging.getLogger("forge.guardrails")

ProblemKind = Literal[
    "unknown_tool",
    "invalid_json",
    "not_object",
    "schema",
    "duplicate_id",
    "missing_id",
    "no_tool_call",
    "tool_intent",  # prose that tries to use a tool under auto (guardrails/intent.py)
    "truncated",  # call markup cut off by max_tokens: never rescued with cut values
    "unparsed",  # the backend failed to parse the model's output and did not return it
    "placeholder",  # an argument copied from the tool definition (guardrails/placeholders.py)
    "tool_expected",  # prose under auto where the request asks for a tool (relevance.py)
    "tool_decision",  # a refusal or description under auto --auto-intent decide (decision.py)
]

MAX_SCHEMA_PROBLEMS = 5
"""Per call: more than a handful of schema errors only adds noise to the corrective message."""


@dataclass(slots=True)
class Problem:
    kind: ProblemKind
    tool: str | None
    call_index: int | None
    message: str


class ToolIndex:
    """The request's tools by name, with a JSON Schema validator compiled lazily per tool.

    Built from the OpenAI ``tools`` list. Entries that are not usable function tools are
    skipped; a tool whose ``parameters`` is not a valid schema accepts any object and is listed
    in :attr:`notes`, so a client's sloppy schema never turns into a retry loop.
    """

    def __init__(
        self, tools: Sequence[Any] | None, conversation: str | Callable[[], str] | None = None
    ) -> None:
        self._conversation = conversation
        """The request's message text for the placeholder check, or a function giving it (read
        only when a call is checked: most requests carry no call); None turns the check off."""
        self._tools: dict[str, dict[str, Any]] = {}
        self._validators: dict[str, Validator | None] = {}
        self._light: dict[str, bool] = {}
        self._keys: dict[str, str | None] = {}
        self._checked: dict[tuple[str, str, int], list[Problem]] = {}
        """validate_call's verdicts: the repair pass and the judging check the same calls."""
        self.notes: dict[str, str] = {}
        """Tool name -> why its schema is not enforced (invalid, unresolvable $ref, ...)."""
        for tool in tools if isinstance(tools, list | tuple) else ():
            function = _function_of(tool)
            if function is not None and function["name"] not in self._tools:
                self._tools[function["name"]] = tool
        self.names: frozenset[str] = frozenset(self._tools)

    @property
    def conversation(self) -> str | None:
        if callable(self._conversation):
            self._conversation = self._conversation()
        return self._conversation

    def get(self, name: str) -> dict[str, Any] | None:
        """The client's tool dict for ``name`` (exactly as sent), or None."""
        return self._tools.get(name)

    def parameters(self, name: str) -> Any:
        """The ``parameters`` schema of ``name`` (None when absent)."""
        tool = self._tools.get(name)
        function = _function_of(tool) if tool is not None else None
        return function.get("parameters") if function is not None else None

    def validator(self, name: str) -> Validator | None:
        """A compiled validator for ``name``'s parameters, or None when any object is fine."""
        if name not in self._validators:
            self._validators[name] = self._compile(name)
        return self._validators[name]

    def _compile(self, name: str) -> Validator | None:
        schema = self.parameters(name)
        if schema is None or schema == {} or schema is True:
            return None
        if not isinstance(schema, dict | bool):
            self.notes[name] = "parameters is not a JSON Schema object; any object is accepted"
            return None
        validator, note = compiled_validator(schema, name, self._key(name))
        if note:
            self.notes[name] = note
        return validator

    def light(self, name: str) -> bool:
        """``name``'s schema is small and has no references: validating a small call against
        it is a few thousand evaluations at most, quick enough for the event loop. (A
        reference can multiply the work up to the evaluation budget.)"""
        if name not in self._light:
            text = self._key(name) if self.parameters(name) is not None else ""
            self._light[name] = text is not None and len(text) <= LIGHT_SCHEMA and not any(
                marker in text for marker in _REF_KEYWORDS
            )
        return self._light[name]

    def _key(self, name: str) -> str | None:
        """``name``'s schema as canonical JSON, written once per request: the compiled
        validators' cache key and the measure of :meth:`light`."""
        if name not in self._keys:
            self._keys[name] = _key(self.parameters(name))
        return self._keys[name]

    def give_up_on(self, name: str, note: str) -> None:
        """Stop enforcing ``name``'s schema (it could not be applied to a call)."""
        self._validators[name] = None
        self.notes[name] = note
        schema = self.parameters(name)
        if isinstance(schema, dict | bool):
            forget_validator(schema, note)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def __bool__(self) -> bool:
        return bool(self._tools)


LIGHT_SCHEMA = 2048
"""Canonical JSON size up to which a schema without references counts as light."""
_REF_KEYWORDS = ('"$ref"', '"$dynamicRef"', '"$recursiveRef"')

_COMPILED: OrderedDict[str, tuple[Validator | None, str]] = OrderedDict()
_COMPILED_MAX = 256


def compiled_validator(
    schema: dict[str, Any] | bool, name: str = "", key: str | None = ""
) -> tuple[Validator | None, str]:
    """A checked, compiled validator for ``schema`` and a note when it cannot be enforced.

    Agents send the same tools with every request, and checking a schema costs far more than
    validating arguments against it, so compiled validators are kept (bounded, LRU) by the
    schema's canonical JSON. Validators hold no per-call state, so sharing them is safe.
    A schema is not enforced when it is invalid, has a ``$ref`` outside itself, or a
    ``patternProperties`` regex RE2 cannot run (see ``safe_schema``); that is logged once per
    distinct schema, without the schema's content. ``key``: the schema's canonical JSON when
    the caller has it ("" computes it here).
    """
    if key == "":
        key = _key(schema)
    if key is not None and key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key]
    try:
        cls = validators.validator_for(schema, default=Draft202012Validator)
        cls.check_schema(schema)
        reason, unevaluated = safe_schema.inspect(schema)
        result: tuple[Validator | None, str] = (
            (None, reason) if reason else (safe_schema.build(cls, schema, unevaluated), "")
        )
    except Exception as exc:  # SchemaError, RecursionError, anything a strange schema provokes
        result = (None, f"invalid parameters schema ({_first_line(exc)}); not enforced")
    if result[0] is None:
        log.warning("tool %r: schema %s", name[:100], result[1])
    if key is not None:
        _COMPILED[key] = result
        if len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    return result


def forget_validator(schema: dict[str, Any] | bool, note: str) -> None:
    """Cache ``schema`` as not enforced (applying it to a call failed)."""
    key = _key(schema)
    if key is not None and key in _COMPILED:
        _COMPILED[key] = (None, note)


def _key(schema: Any) -> str | None:
    try:
        return json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return None


def _function_of(tool: Any) -> dict[str, Any] | None:
    """The function part of a tool entry; also accepts a flat ``{"name", "parameters"}``."""
    if not isinstance(tool, dict):
        return None
    function = tool.get("function") if "function" in tool else tool
    if not isinstance(function, dict):
        return None
    name = function.get("name")
    return function if isinstance(name, str) and name else None


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:200]


# --- arguments ---------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_arguments(text: str) -> Any:
    """Parse an arguments string; empty means ``{}``. Raises ``ValueError`` on invalid JSON.

    NaN and Infinity are rejected: they are not JSON and clients choke on them.
    """
    if not text.strip():
        return {}
    return json.loads(text, parse_constant=_reject_constant)


def normalize_arguments(text: str) -> str:
    """Canonical compact JSON for valid arguments (``""`` gives ``"{}"``); key order is kept.

    Raises ``ValueError`` when ``text`` is not valid JSON.
    """
    return json.dumps(decode_arguments(text), ensure_ascii=False, separators=(",", ":"))


# --- single calls ------------------------------------------------------------------------------


def validate_call(call: ToolCall, index: ToolIndex, position: int) -> list[Problem]:
    """Problems with one call: unknown name, arguments not a JSON object, schema violations,
    then (when ``index.conversation`` is set) placeholder values."""
    key = (call.name, call.arguments, position)
    known = index._checked.get(key)
    if known is None:
        known = index._checked[key] = _checked_call(call, index, position)
    return list(known)


def _checked_call(call: ToolCall, index: ToolIndex, position: int) -> list[Problem]:
    problems = _call_problems(call, index, position)
    if problems or index.conversation is None:
        return problems
    arguments = decode_arguments(call.arguments)  # valid: _call_problems decoded it
    messages = placeholder_messages(
        call.name, arguments, index.parameters(call.name), index.names, index.conversation
    )
    return [Problem("placeholder", call.name, position, text) for text in messages]


def _call_problems(call: ToolCall, index: ToolIndex, position: int) -> list[Problem]:

    def problem(kind: ProblemKind, message: str) -> Problem:
        return Problem(kind, call.name, position, message)

    if call.name not in index:
        return [problem("unknown_tool", unknown_tool_message(call.name, index))]
    try:
        arguments = decode_arguments(call.arguments)
    except (ValueError, RecursionError) as exc:
        return [
            problem(
                "invalid_json",
                f"tool {call.name!r}: arguments are not valid JSON ({_json_error(exc)})",
            )
        ]
    if not isinstance(arguments, dict):
        return [
            problem(
                "not_object",
                f"tool {call.name!r}: arguments must be a JSON object, got {_json_type(arguments)}",
            )
        ]
    validator = index.validator(call.name)
    if validator is None:
        return []
    safe_schema.reset_budget()
    try:
        errors = list(validator.iter_errors(arguments))
    except safe_schema.TooComplex:  # this call only: a smaller one may still be checked
        index.notes[call.name] = "schema too costly to apply to this call; not enforced"
        log.warning("tool %r: schema too costly to apply to a call; not enforced", call.name)
        return []
    except Exception as exc:  # an unresolvable $ref, deep recursion: the schema's fault
        # The exception text may quote a $ref URI (credentials): only its type is logged.
        note = f"schema could not be applied ({type(exc).__name__}); not enforced"
        log.warning("tool %r: %s", call.name, note)
        index.give_up_on(call.name, note)
        return []
    messages: list[str] = []
    for error in sorted(errors, key=lambda e: [str(part) for part in e.absolute_path]):
        text = f"tool {call.name!r}: {describe_error(error)}"
        if text not in messages:
            messages.append(text)
    return [problem("schema", text) for text in messages[:MAX_SCHEMA_PROBLEMS]]


def available_tools(index: ToolIndex) -> str:
    """``available tools: a, b`` (sorted), or ``no tools are available``."""
    if not index:
        return "no tools are available"
    return f"available tools: {', '.join(sorted(index.names))}"


def unknown_tool_message(name: str, index: ToolIndex) -> str:
    """``unknown tool 'x'; available tools: a, b``."""
    return f"unknown tool {name!r}; {available_tools(index)}"


def _json_error(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        # Some messages already end in "at" ("Unterminated string starting at").
        joint = " char" if exc.msg.endswith(" at") else " at char"
        return f"{exc.msg}{joint} {exc.pos}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return _first_line(exc)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


# --- schema error wording ----------------------------------------------------------------------


def show(value: Any, limit: int = 60) -> str:
    """A short rendering of a JSON value: strings quoted like ``'c'``, the rest as JSON."""
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        text = "[" + ", ".join(show(v, limit) for v in value) + "]"
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def argument_path(path: Sequence[Any]) -> str:
    """``['location', 'tags', 2]`` -> ``location.tags[2]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def describe_error(error: ValidationError) -> str:
    """One precise phrase for a jsonschema error, naming the argument path."""
    path = argument_path(list(error.absolute_path))
    where = f"argument {path!r}" if path else "arguments"
    keyword = error.validator
    value = error.validator_value
    instance = error.instance
    if keyword == "required" and isinstance(instance, dict) and isinstance(value, list):
        missing = [repr(_join(path, n)) for n in value if isinstance(n, str) and n not in instance]
        plural = "s" if len(missing) > 1 else ""
        return f"missing required argument{plural} {', '.join(missing)}"
    if keyword in ("additionalProperties", "unevaluatedProperties") and isinstance(instance, dict):
        extra = _unexpected(error.schema, instance)
        if extra:
            plural = "s" if len(extra) > 1 else ""
            names = ", ".join(repr(_join(path, n)) for n in extra)
            return f"unexpected argument{plural} {names}"
    if keyword == "enum":
        return f"{where} must be one of {show(value, 200)}, got {show(instance)}"
    if keyword == "const":
        return f"{where} must be {show(value)}, got {show(instance)}"
    if keyword == "type":
        expected = " or ".join(value) if isinstance(value, list) else str(value)
        return f"{where} must be of type {expected}, got {_json_type(instance)} {show(instance)}"
    if keyword in ("anyOf", "oneOf"):
        return f"{where} must be {schema_summary(error.schema)}, got {show(instance)}"
    bound = _BOUNDS.get(str(keyword))
    if bound is not None:
        units = _UNITS.get(type(instance))
        if units is not None:
            unit = units[0] if value == 1 else units[1]
            return f"{where} must have {bound} {show(value)} {unit}, got {len(instance)}"
        return f"{where} must be {bound} {show(value)}, got {show(instance)}"
    if keyword == "pattern":
        return f"{where} must match the pattern {show(value)}, got {show(instance)}"
    return f"{where}: {_first_line(error)}"


_UNITS = {str: ("character", "characters"), list: ("item", "items"), dict: ("key", "keys")}
_BOUNDS = {
    "minimum": ">=",
    "maximum": "<=",
    "exclusiveMinimum": ">",
    "exclusiveMaximum": "<",
    "minLength": "at least",
    "maxLength": "at most",
    "minItems": "at least",
    "maxItems": "at most",
    "minProperties": "at least",
    "maxProperties": "at most",
}


def schema_summary(schema: Any, depth: int = 0) -> str:
    """A short type expression for a schema: ``string``, ``'c' | 'f'``, ``integer[]``..."""
    if not isinstance(schema, dict) or depth > 3:
        return "any"
    if isinstance(schema.get("enum"), list):
        return " | ".join(show(value, 30) for value in schema["enum"][:10])
    if "const" in schema:
        return show(schema["const"], 30)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return " | ".join(schema_summary(sub, depth + 1) for sub in schema[key][:5])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if kind == "array":
        item = schema_summary(schema.get("items"), depth + 1)
        return f"{item}[]" if " " not in item else f"({item})[]"
    if kind == "object" and isinstance(schema.get("properties"), dict):
        return "object{" + ", ".join(list(schema["properties"])[:6]) + "}"
    return kind if isinstance(kind, str) else "any"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _unexpected(schema: Any, instance: dict[str, Any]) -> list[str]:
    if not isinstance(schema, dict):
        return []
    declared = schema.get("properties")
    declared = declared if isinstance(declared, dict) else {}
    patterns = schema.get("patternProperties")
    patterns = list(patterns) if isinstance(patterns, dict) else []
    extra = []
    for key in instance:
        if key in declared:
            continue
        if any(safe_schema.regex_search(p, key) for p in patterns):
            continue
        extra.append(key)
    return extra


# --- whole turns -------------------------------------------------------------------------------


def required_tool(tool_choice: Any) -> tuple[bool, str | None]:
    """``(a call is required, the tool it must name)`` for OpenAI and Anthropic tool_choice."""
    if tool_choice == "required":
        return True, None
    if isinstance(tool_choice, dict):
        kind = tool_choice.get("type")
        if kind == "any":  # Anthropic's "required"
            return True, None
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else tool_choice.get("name")
        if kind in ("function", "tool") and isinstance(name, str) and name:
            return True, name
    return False, None


def validate_turn(turn: AssistantTurn, index: ToolIndex, tool_choice: Any) -> list[Problem]:
    """All problems of an answer: every call, ids present and unique, and ``tool_choice``.

    With ``tool_choice`` "auto", "none" or absent, an answer without calls is fine.
    """
    problems: list[Problem] = []
    seen: set[str] = set()
    for position, call in enumerate(turn.tool_calls):
        if not call.id:
            problems.append(
                Problem("missing_id", call.name, position, f"tool {call.name!r}: call has no id")
            )
        elif call.id in seen:
            problems.append(
                Problem(
                    "duplicate_id",
                    call.name,
                    position,
                    f"tool {call.name!r}: call id {call.id!r} is used twice",
                )
            )
        else:
            seen.add(call.id)
        problems.extend(validate_call(call, index, position))
    required, name = required_tool(tool_choice)
    if name is not None and not any(call.name == name for call in turn.tool_calls):
        problems.append(
            Problem(
                "no_tool_call",
                name,
                None,
                f"a call to tool {name!r} is required, but the answer has none",
            )
        )
    elif required and name is None and not turn.tool_calls:
        problems.append(
            Problem(
                "no_tool_call",
                None,
                None,
                "a tool call is required, but the answer has none; " + available_tools(index),
            )
        )
    return problems

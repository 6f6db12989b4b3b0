"""The one JSON reader and the one JSON writer for everything forge receives and sends.

Python's ``json`` module is lenient where a proxy must not be: it accepts ``NaN`` and
``Infinity`` (not JSON), turns ``1e400`` into an infinity that cannot be written back, hands
out lone UTF-16 surrogates (``"\\ud800"``, what a Node client cutting an emoji in half sends)
that cannot be encoded as UTF-8, and nests until the interpreter's recursion limit. So:

* :func:`loads` is strict. It refuses invalid UTF-8, ``NaN``/``Infinity``, numbers out of the
  float range and nesting deeper than :data:`MAX_DEPTH`, each with a short reason; and it
  replaces every lone surrogate with U+FFFD, so no string inside forge is ever unencodable.
  :func:`client_json` turns a refusal into a 400, :func:`backend_json` into a 502 naming the
  backend.
* :func:`dumps` cannot fail on what forge carries: a lone surrogate that still got in (decoded
  from tool arguments, say) is written as U+FFFD and a non-finite float as ``null``, so the
  bytes sent are always valid UTF-8 JSON. :class:`SafeJSONResponse` renders with it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.responses import JSONResponse

from forge_core.errors import BackendProtocolError, InvalidRequest

try:  # the fast path of loads/dumps; the stdlib alone gives the same results, slower
    import orjson as _orjson

    # Types the stdlib writer refuses must be refused here too (then the stdlib raises).
    _ORJSON_STRICT = _orjson.OPT_PASSTHROUGH_DATACLASS | _orjson.OPT_PASSTHROUGH_DATETIME
except ImportError:  # pragma: no cover - orjson is a core dependency
    _orjson = None  # type: ignore[assignment]
    _ORJSON_STRICT = 0

MAX_DEPTH = 128
"""Arrays and objects nested deeper than this are refused (serde_json's default limit):
far beyond any real request or tool schema, and well inside what the recursive code forge
runs on them (schema validation, serialization) handles."""

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


class JSONRejected(ValueError):
    """Text that is not JSON forge accepts; ``reason`` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- reading ----------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise JSONRejected(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JSONRejected(f"the number {text[:40]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def loads(data: bytes | bytearray | str) -> Any:
    """Decode strict JSON (see the module docstring); raises :class:`JSONRejected`."""
    if _orjson is not None:
        value = _fast_loads(data)
        if value is not _SLOW:
            return value
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode(json.detect_encoding(data))
        except UnicodeDecodeError as exc:
            raise JSONRejected(f"invalid UTF-8 at byte {exc.start}") from None
    else:
        text = data
    text = text.removeprefix("\ufeff")
    try:
        value = _DECODER.decode(text)
    except JSONRejected:
        raise
    except RecursionError:
        raise JSONRejected(f"nested deeper than the limit of {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise JSONRejected(f"{exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except ValueError:  # an integer of more digits than Python converts (4300)
        raise JSONRejected("a number has too many digits") from None
    # Fewer containers than the limit cannot nest beyond it: skip the walk (most events).
    if text.count("[") + text.count("{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise JSONRejected(f"nested deeper than the limit of {MAX_DEPTH} levels")
    if _ESCAPED_SURROGATE.search(text) or (not text.isascii() and _SURROGATE.search(text)):
        value = _replace_surrogates(value)
    return value


_SLOW = object()
_HUGE = float(2**63)
_SCAN_LIMIT = 4096
"""Texts up to this size are scanned before any walk (see _fast_loads)."""
_WALKED = frozenset({dict, list, float})


def _fast_loads(data: bytes | bytearray | str) -> Any:
    """orjson's answer where it is the same as the strict decoder's, else ``_SLOW``.

    orjson (3-10x faster) already refuses what forge refuses: invalid UTF-8, NaN and
    Infinity, numbers out of the float range, lone surrogates, a BOM. Anything it refuses goes
    to the stdlib path, which accepts or refuses it with the exact reason. Two things differ
    and are checked here: it nests to 1024 levels (forge's limit is :data:`MAX_DEPTH`) and it
    reads an integer beyond 64 bits as a float (the stdlib path keeps it exact).
    """
    try:
        value = _orjson.loads(data)
    except _orjson.JSONDecodeError:
        return _SLOW
    if isinstance(value, dict | list):
        if len(data) > _SCAN_LIMIT:
            # A walk costs what the containers cost, a text scan what the bytes cost: for a
            # long text (a 100 kB history: ~40 us a scan) the walk alone is cheaper.
            if _deeper_or_huge(value, MAX_DEPTH):
                return _SLOW
        else:
            # Fewer containers than the limit cannot nest beyond it; a text that cannot
            # spell a huge number holds none: most stream events skip the walk.
            opening = ("[", "{") if isinstance(data, str) else (b"[", b"{")
            deep = data.count(opening[0]) + data.count(opening[1]) > MAX_DEPTH  # type: ignore[arg-type]
            limit = MAX_DEPTH if deep else None
            if (deep or _may_be_huge(data)) and _deeper_or_huge(value, limit):
                return _SLOW
    elif isinstance(value, float) and abs(value) >= _HUGE:
        return _SLOW
    return value


_DIGITS = b"0123456789"
_AS_ZERO = bytes.maketrans(_DIGITS, b"0" * 10)
_AS_ZERO_STR = str.maketrans("123456789", "000000000")


def _may_be_huge(data: bytes | bytearray | str) -> bool:
    """Whether the text may spell a number of 2**63 or more: 19 digits in a row or a digit
    before an exponent (a false alarm only costs the walk)."""
    marked = data.translate(_AS_ZERO_STR) if isinstance(data, str) else data.translate(_AS_ZERO)
    if isinstance(marked, str):
        return "0" * 19 in marked or "0e" in marked or "0E" in marked
    return b"0" * 19 in marked or b"0e" in marked or b"0E" in marked


def _deeper_or_huge(value: dict[str, Any] | list[Any], limit: int | None) -> bool:
    """Whether ``value`` nests deeper than ``limit`` (None: not checked) or holds a float of
    at least 2**63 in size (maybe an integer orjson could not hold; then the stdlib path
    decides). Level by level, each node's containers and floats collected in one
    comprehension: about half the time of a stack of (node, depth) pairs."""
    level: list[Any] = [value]
    depth = 1
    while level:
        if limit is not None and depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            kind = type(node)
            if kind is float:
                if abs(node) >= _HUGE:
                    return True
                continue
            below += [
                child
                for child in (node.values() if kind is dict else node)
                if type(child) in _WALKED
            ]
        level = below
        depth += 1
    return False


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests deeper than ``limit``: a walk level by level, collecting each
    level's containers in one comprehension per node (half the time of a stack of pairs:
    ~50 us for a 100 kB agent history)."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            below += [
                child
                for child in (node.values() if type(node) is dict else node)
                if type(child) is dict or type(child) is list
            ]
        level = below
        depth += 1
    return False


def _replace_surrogates(value: Any) -> Any:
    """``value`` with lone surrogates in every string (keys too) replaced by U+FFFD.

    Recursion is bounded: callers have checked the depth. Valid pairs never get here, the
    decoder has already joined them into one code point.
    """
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(k): _replace_surrogates(v) for k, v in value.items()}
    return value


def clean_text(text: str) -> str:
    """``text`` with any lone surrogate replaced by U+FFFD (cheap for ASCII text)."""
    if text.isascii():
        return text
    return _SURROGATE.sub(REPLACEMENT, text)


def clean_json_text(text: str) -> str:
    """JSON text (tool arguments as a model wrote them) without escaped lone surrogates:
    strict parsers (serde_json, Go) refuse ``"\\ud800"``, so such text is re-rendered with
    U+FFFD. Other text, valid or not, is returned as it is."""
    if "\\u" not in text or not _ESCAPED_SURROGATE.search(text):
        return text
    try:
        return dumps(loads(text), compact=True)
    except JSONRejected:
        return text


def client_json(data: bytes | str) -> Any:
    """A client's request body; a refusal is a 400 saying why."""
    try:
        return loads(data)
    except JSONRejected as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc.reason}.") from None


def backend_json(backend: str, data: bytes | str, what: str = "answered with a body") -> Any:
    """JSON a backend sent; a refusal is a 502 reading "Backend 'x' <what> that is not JSON:
    <reason>" (``what``: "answered with a body", "streamed an event"...)."""
    try:
        return loads(data)
    except JSONRejected as exc:
        raise BackendProtocolError(backend, f"{what} that is not JSON: {exc.reason}") from None


# --- writing ----------------------------------------------------------------------------------


_SPACED = json.JSONEncoder(ensure_ascii=False, allow_nan=False)
_COMPACT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(value: Any, *, compact: bool = False) -> str:
    """JSON text that always encodes as valid UTF-8 (non-ASCII kept as it is).

    ``compact``: no spaces after separators (the form tool arguments and Anthropic events use).
    """
    if compact and _orjson is not None:
        fast = _fast_dumps(value)
        if fast is not None:
            return fast.decode()
    encoder = _COMPACT if compact else _SPACED
    try:
        text = encoder.encode(value)
    except ValueError:  # NaN or Infinity somewhere: not JSON, written as null
        text = encoder.encode(_finite(value))
    return clean_text(text)


def dumps_bytes(value: Any, *, compact: bool = False) -> bytes:
    if compact and _orjson is not None:
        fast = _fast_dumps(value)
        if fast is not None:
            return fast
    return dumps(value, compact=compact).encode()


def _fast_dumps(value: Any) -> bytes | None:
    """orjson's compact bytes where they mean the same as the stdlib writer's, else None.

    It writes NaN/Infinity as null (as :func:`dumps` does); it refuses lone surrogates,
    non-string keys and integers beyond 64 bits, which then take the stdlib path. Floats may
    be spelled differently (``1e16`` for ``1e+16``): the same number.
    """
    try:
        return _orjson.dumps(value, option=_ORJSON_STRICT)  # type: ignore[no-any-return]
    except (TypeError, _orjson.JSONEncodeError):
        return None


def backend_dumps(backend: str, value: Any, what: str) -> str:
    """Compact JSON of something a backend sent (tool arguments as an object, say); a value
    JSON cannot carry (NaN, Infinity) is the backend's protocol error, not a silent null."""
    try:
        text = _COMPACT.encode(value)
    except ValueError:
        raise BackendProtocolError(backend, f"sent {what} holding NaN or Infinity") from None
    except RecursionError:
        raise BackendProtocolError(
            backend, f"sent {what} nested deeper than {MAX_DEPTH} levels"
        ) from None
    return clean_text(text)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


class SafeJSONResponse(JSONResponse):
    """Starlette's JSONResponse rendered with :func:`dumps` (compact, like starlette's own)."""

    def render(self, content: Any) -> bytes:
        return dumps_bytes(content, compact=True)

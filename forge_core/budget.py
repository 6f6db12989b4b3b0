"""Context budgets: how many tokens a request may use, how forge picks that number, and the
check that turns a prompt that plainly does not fit into a clear 400.

Modes (``--budget-mode``):

* ``backend``: whatever the backend reports (llama-server ``/props`` ``n_ctx``, Ollama model
  info). forge sets nothing.
* ``manual``: ``--num-ctx N``; the plugin applies it (llama-server ``-c N`` at launch, Ollama
  ``options.num_ctx`` per request) and the number in force is read back, since a server may
  round or clamp it.
* ``forge-full`` / ``forge-fast``: forge picks the number from the model's native maximum and the
  machine's free memory (see :func:`choose_context` for the rule).

The GGUF header is read here directly (only the metadata, never the tensors) so a managed launch
can be sized before the server exists.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from forge_core.errors import ContextExceeded, PluginError
from forge_core.tokens import BYTES_PER_TOKEN, measure

log = logging.getLogger("forge.budget")

BudgetMode = Literal["backend", "manual", "forge-full", "forge-fast"]
BUDGET_MODES: tuple[str, ...] = ("backend", "manual", "forge-full", "forge-fast")

GRANULE = 256
"""llama-server rounds ``-c`` up to a multiple of 256; forge picks multiples of it."""
MIN_CONTEXT = 1024
"""Below this an agent's system prompt and tool list alone would not fit: refuse to start."""
FAST_FLOOR = 4096
FAST_DIVISOR = 4
RESERVE_FRACTION = 0.10
RESERVE_MIN_BYTES = 512 * 1024 * 1024
"""Memory kept free for compute buffers, the server itself and everything else on the box."""


# --- GGUF metadata --------------------------------------------------------------------------

_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle

    def take(self, size: int) -> bytes:
        data = self.handle.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.unpack("<I"), self.unpack("<Q")
            if item_kind in _SCALARS and count > 4096:
                # Vocabulary-sized numeric arrays: skip them without decoding.
                self.handle.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
                return None
            if item_kind == _STRING and count > 4096:
                for _ in range(count):
                    self.handle.seek(self.unpack("<Q"), 1)
                return None
            return [self.value(item_kind) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {kind}")


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (large arrays such as the vocabulary omitted)."""
    with open(path, "rb") as handle:
        reader = _Reader(handle)
        if reader.take(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = reader.unpack("<I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        reader.unpack("<Q")  # tensor count
        count = reader.unpack("<Q")
        meta: dict[str, Any] = {}
        for _ in range(count):
            key = reader.string()
            meta[key] = reader.value(reader.unpack("<I"))
        return meta


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What sizing needs from a model: its native context and its KV-cache cost per token."""

    architecture: str
    context_length: int
    layers: int
    kv_heads: tuple[int, ...]
    """KV heads per layer (GQA); one entry per layer."""
    key_length: int
    value_length: int

    def kv_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """K and V for every layer: sum(kv_heads) x (key + value head dims) x element size.

        ``bytes_per_element`` is 2 for llama-server's default f16 cache. Sliding-window and
        latent-attention layers cost less in reality: this is an upper bound.
        """
        return sum(self.kv_heads) * (self.key_length + self.value_length) * bytes_per_element


def model_shape(meta: Mapping[str, Any]) -> ModelShape:
    """The :class:`ModelShape` described by GGUF metadata (``{arch}.*`` keys)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError("GGUF metadata has no general.architecture")

    def number(key: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, list):  # some models give a per-layer list: take the largest
            value = max(value) if value else default
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"GGUF metadata has no usable {arch}.{key}")
        return value

    layers = number("block_count")
    heads = number("attention.head_count")
    raw_kv = meta.get(f"{arch}.attention.head_count_kv", heads)
    if isinstance(raw_kv, list) and len(raw_kv) == layers:
        kv_heads = tuple(int(h) for h in raw_kv)
    else:
        kv_heads = (number("attention.head_count_kv", heads),) * layers
    head_dim = number("embedding_length") // heads
    return ModelShape(
        architecture=arch,
        context_length=number("context_length"),
        layers=layers,
        kv_heads=kv_heads,
        key_length=number("attention.key_length", head_dim),
        value_length=number("attention.value_length", head_dim),
    )


def read_model_shape(path: Path) -> ModelShape:
    """:func:`model_shape` of a GGUF file; a clear PluginError when it cannot be read."""
    try:
        return model_shape(read_gguf_metadata(path))
    except (OSError, ValueError, struct.error) as exc:
        raise PluginError(f"cannot size the context from {path}: {exc}") from None


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` in bytes (Linux), or None where the kernel does not report it."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# --- the sizing rule --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContextChoice:
    """A context size forge picked, with the arithmetic that led to it (for logs and docs)."""

    tokens: int
    full: int
    explanation: str


def _floor(tokens: int) -> int:
    return tokens // GRANULE * GRANULE


def choose_context(
    mode: BudgetMode, shape: ModelShape, available: int, model_bytes: int
) -> ContextChoice:
    """Pick the context for ``forge-full`` or ``forge-fast``.

    full = the model's native maximum, or fewer tokens if their KV cache would not fit in
    ``available - model_bytes - reserve`` (reserve = max(512 MiB, 10% of available)), rounded
    down to a multiple of 256.

    fast = full / 4, but at least 4096 (or full when full is smaller), rounded down to 256.
    Prompt processing time grows with the prompt, and a client fills whatever window it is
    given before compacting, so a smaller window keeps every turn quick; 4096 leaves room for
    a typical agent's system prompt and tool list.
    """
    if mode not in ("forge-full", "forge-fast"):
        raise ValueError(f"choose_context does not handle mode {mode}")
    per_token = shape.kv_bytes_per_token()
    reserve = max(RESERVE_MIN_BYTES, int(available * RESERVE_FRACTION))
    room = available - model_bytes - reserve
    fits = _floor(room // per_token) if room > 0 else 0
    full = min(_floor(shape.context_length), fits)
    mib = 1024 * 1024
    why = (
        f"native {shape.context_length}; KV {per_token} B/token; MemAvailable {available // mib}"
        f" MiB - model {model_bytes // mib} MiB - reserve {reserve // mib} MiB fits {fits}"
    )
    if full < MIN_CONTEXT:
        raise PluginError(
            f"not enough free memory for a {MIN_CONTEXT}-token context ({why}); free memory or "
            "use --budget-mode manual --num-ctx N"
        )
    if mode == "forge-full":
        return ContextChoice(full, full, f"forge-full = min(native, fits) = {full} ({why})")
    fast = max(min(full, FAST_FLOOR), _floor(full // FAST_DIVISOR))
    return ContextChoice(
        fast, full, f"forge-fast = max(min(full, {FAST_FLOOR}), full/{FAST_DIVISOR}) = {fast}"
        f" with full {full} ({why})",
    )


def plan_context(mode: BudgetMode, model: Path, meminfo: Path | None = None) -> ContextChoice:
    """Read ``model``'s GGUF header and the free memory, then :func:`choose_context`."""
    shape = read_model_shape(model)
    available = mem_available(meminfo) if meminfo else mem_available()
    if available is None:
        raise PluginError(
            f"--budget-mode {mode} needs the free memory (/proc/meminfo MemAvailable), which "
            "this system does not report; use --budget-mode manual --num-ctx N"
        )
    return choose_context(mode, shape, available, model.stat().st_size)


# --- the budget in force and the prompt check -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContextBudget:
    """The context in force for each request, as the backend reported it after start."""

    mode: str
    tokens: int | None
    """None: the backend did not say (no check is made)."""
    detail: str = ""

    def describe(self) -> str:
        return f"{self.tokens if self.tokens else 'unknown'} ({self.mode})"


CHARS_PER_TOKEN = BYTES_PER_TOKEN
"""Typical for English and code with BPE vocabularies: the quick estimate (UTF-8 bytes)."""
PLAIN_CHARS_PER_TOKEN = 6.0
"""Without an exact count, a prompt is rejected only if it exceeds the budget even at this
density, which real text (prose ~4, code ~3.5 bytes per token) does not reach."""


async def check_prompt(
    body: Mapping[str, Any], budget: int | None, count_exact: Any = None
) -> int | None:
    """Raise :class:`ContextExceeded` when the prompt plainly does not fit in ``budget``.

    Cheap first: a prompt whose rough estimate is under half the budget passes without more
    work. Otherwise ``count_exact(body)`` (an async callable returning tokens or None, such as
    the backend client's ``count_tokens``) decides when it can; without an exact count the
    prompt is rejected only if even :data:`PLAIN_CHARS_PER_TOKEN` characters per token would
    overflow. Returns the token count used for the decision (None when skipped).
    """
    if not budget:
        return None
    size = measure(body)
    rough = size.tokens()
    if rough < budget // 2:
        return None
    exact = await count_exact(dict(body)) if count_exact is not None else None
    if exact is not None:
        if exact >= budget:
            raise ContextExceeded(exact, budget)
        return exact
    floor = size.tokens(PLAIN_CHARS_PER_TOKEN)
    if floor >= budget:
        raise ContextExceeded(rough, budget)
    return rough


DENSE_CHARS_PER_TOKEN = 3.0
"""Without an exact count, ``max_tokens`` is clamped as if the prompt were this dense (JSON and
code reach ~3), so the room left is not overestimated."""
MAX_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


def _asked_fields(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The token-limit fields the body sets to a positive integer."""
    return tuple(
        f for f in MAX_TOKEN_FIELDS
        if isinstance(v := body.get(f), int) and not isinstance(v, bool) and v > 0
    )


def _asked_tokens(body: Mapping[str, Any]) -> int | None:
    fields = _asked_fields(body)
    return max(body[f] for f in fields) if fields else None


async def fit_request(
    body: dict[str, Any], budget: int | None, count_exact: Any = None
) -> tuple[dict[str, Any], str | None]:
    """The body to send, with ``max_tokens`` clamped to the room the prompt leaves, and a note
    (``max-tokens-clamped:N``) when it was clamped.

    Agents ask for far more than a local context holds (Claude Code 32000-128000, opencode
    32000), and vLLM refuses a request whose prompt + ``max_tokens`` exceed its context, so a
    request that fits gets ``max_tokens`` = budget - prompt instead of an error. Only a prompt
    that alone does not fit is refused (:class:`ContextExceeded`, as :func:`check_prompt`). The
    prompt is counted exactly where the backend can (``count_exact``), only when an estimate
    says it might matter; otherwise estimated densely (:data:`DENSE_CHARS_PER_TOKEN`).
    ``max_tokens`` and ``max_completion_tokens`` are both clamped; absent ones stay absent.
    """
    if not budget:
        return body, None
    asked = _asked_tokens(body)
    size = measure(body)  # one walk, priced at three densities
    rough, dense = size.tokens(), size.tokens(DENSE_CHARS_PER_TOKEN)
    if rough < budget // 2 and (asked is None or dense + asked <= budget):
        return body, None  # plainly fits: no counting
    exact = await count_exact(dict(body)) if count_exact is not None else None
    plain = size.tokens(PLAIN_CHARS_PER_TOKEN)
    if exact is not None and exact >= budget:
        raise ContextExceeded(exact, budget)
    if exact is None and plain >= budget:
        raise ContextExceeded(rough, budget)
    if asked is None:
        return body, None
    # The most careful estimate that still leaves room (plain always does, or it was refused).
    estimates = (exact,) if exact is not None else (dense, rough, plain)
    room = next((budget - p for p in estimates if budget - p >= 1), 1)
    if asked <= room:
        return body, None
    clamped = dict(body)
    for field in _asked_fields(body):
        clamped[field] = min(body[field], room)
    log.info("max_tokens %d clamped to %d: the prompt is %s%d tokens of a %d-token budget",
             asked, room, "" if exact is not None else "about ", budget - room, budget)
    return clamped, f"max-tokens-clamped:{room}"


async def discover_budget(client: Any, mode: str) -> ContextBudget:
    """The budget in force after ``client.start()``: the context size its status reports."""
    try:
        status = await client.status()
    except Exception as exc:  # status() must not raise; a plugin bug must not stop serving
        log.warning("could not read the context size: %s", exc)
        return ContextBudget(mode, None, f"status failed: {exc}")
    if status.context_size is None:
        log.warning("the backend reports no context size (%s): prompts are not size-checked",
                    status.detail or "no detail")
    rule = status.extra.get("budget_rule") if isinstance(status.extra, dict) else None
    return ContextBudget(mode, status.context_size, str(rule or ""))

"""What a backend plugin registers: its capabilities, identity rule, options and client.

A plugin builds one :class:`BackendSpec` and hands it to the ``register`` callback of the
``forge_register_backends`` hook. The spec is the single source of truth about the backend:
capabilities live in it, so they cannot drift from the client that honours them.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import click
from pydantic import BaseModel, ConfigDict

from forge_core.turns import AssistantTurn, BackendChunk

BackendCapability = Literal["native", "prompt"]


class Capabilities(BaseModel):
    """Declared once by the plugin; shown by ``forge plugins``; frozen for the process."""

    model_config = ConfigDict(frozen=True)

    native_tools: bool = True
    """The backend accepts OpenAI ``tools`` and answers with structured tool calls."""
    prompt_tools: bool = False
    """``--backend-capability prompt`` is allowed (tools rendered into the prompt by forge)."""
    streaming: bool = True
    constrained_decoding: bool = False
    """The client can constrain a retry (JSON schema, grammar, named tool_choice)."""
    usage_reporting: bool = True
    managed: bool = False
    """The plugin can launch and supervise the backend process itself."""


class ModelIdentity(BaseModel):
    """How a model is named on the wire versus in forge's registry.

    ``wire_name`` is sent to the backend verbatim (vLLM answers 404 to anything else);
    ``key`` is the short name clients may also use. Both are accepted from clients.
    """

    model_config = ConfigDict(frozen=True)

    wire_name: str
    key: str

    @property
    def names(self) -> tuple[str, ...]:
        return (self.wire_name,) if self.key == self.wire_name else (self.wire_name, self.key)


def identity_as_is(served_name: str) -> ModelIdentity:
    """The default identity rule: the served name is also the registry key."""
    return ModelIdentity(wire_name=served_name, key=served_name)


@dataclass(slots=True)
class BackendSettings:
    """Everything the host resolved from the command line for the chosen backend."""

    backend_url: str | None = field(repr=False)  # may hold userinfo: never in a repr
    model: str | None
    timeout: float
    """``--backend-timeout``: seconds to the first token (the whole answer when not streamed)."""
    capability: BackendCapability = "native"
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    """Values of the plugin's own CLI options, by parameter name (header values among them:
    kept out of the repr)."""
    budget_mode: str = "backend"
    """``--budget-mode``: backend, manual (the plugin's ``num_ctx``), forge-full or forge-fast."""
    idle_timeout: float | None = None
    """``--backend-idle-timeout``: the longest silence once tokens flow (None: the default,
    see :mod:`forge_core.deadline`). Applied by the engine for every plugin."""


@dataclass(slots=True)
class BackendStatus:
    """What a readiness probe learned about the backend (no exceptions: a reason instead)."""

    ready: bool
    detail: str = ""
    models: list[str] = field(default_factory=list)
    context_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class BackendRequest:
    """An OpenAI-shaped chat request on its way to the backend.

    ``body`` is what the backend receives (after identity and transforms). ``verbatim`` is true
    on a clean first attempt, when ``messages`` and ``tools`` are the client's own objects.
    ``original`` holds the client's raw body and protocol so a backend that speaks the client's
    protocol natively can forward it untouched.
    """

    body: dict[str, Any]
    verbatim: bool = True
    attempt: int = 0
    client_protocol: Literal["openai", "anthropic"] = "openai"
    original: dict[str, Any] | None = None


class BackendClient(abc.ABC):
    """The interface the host drives. One instance per process, shared by all requests.

    Implementations raise :mod:`forge_core.errors` exceptions (never raw httpx or KeyError):
    ``BackendUnavailable`` for connection failures, ``BackendTimeout``, ``BackendProtocolError``
    for a broken envelope, ``BackendHTTPError`` for an error status.
    """

    name: str = "backend"
    tools_in_prompt: bool = False
    """True when the client renders tools into the prompt (``--backend-capability prompt``): the
    backend then answers calls as text, so the engine must parse text even with ``--no-rescue``."""
    declined_transforms: frozenset[str] = frozenset()
    """Names of request transforms this client's upstream must not get (e.g. the Anthropic
    client declines ``strip-billing-header`` when it talks to Anthropic's own API); set it in
    ``__init__``, the engine reads it once."""

    async def start(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called once in the app's lifespan before serving (launch, discover, warm up)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called once at shutdown: close connections, stop any managed process."""

    @property
    @abc.abstractmethod
    def base_url(self) -> str:
        """The URL requests go to, for display: the ready line, ``/ready``, error messages.

        Never with credentials: no userinfo, no query (use
        :func:`forge_core.redact.display_url`). A client holding a key or header secret
        registers it with :mod:`forge_core.redact` so it is scrubbed from all output.
        """

    @abc.abstractmethod
    def models(self) -> Sequence[ModelIdentity]:
        """The models served, known after :meth:`start` (no I/O here)."""

    @abc.abstractmethod
    async def complete(self, request: BackendRequest) -> AssistantTurn:
        """One non-streamed call. Malformed argument JSON is returned as-is (not raised)."""

    @abc.abstractmethod
    def stream(self, request: BackendRequest) -> AsyncIterator[BackendChunk]:
        """One streamed call, yielding normalized chunks as they arrive."""

    @abc.abstractmethod
    async def status(self) -> BackendStatus:
        """Readiness probe with a short timeout; reports a reason instead of raising."""

    def constrain_retry(self, body: dict[str, Any], tool: dict[str, Any] | None) -> dict[str, Any]:
        """Return ``body`` changed so the backend must produce a valid call.

        ``tool`` is the OpenAI tool definition the retry should target (None: any tool).
        The default adds nothing; plugins declaring ``constrained_decoding`` override it.
        """
        return body

    async def count_tokens(self, body: dict[str, Any]) -> int | None:
        """Exact prompt token count if the backend can tokenize, else None."""
        return None


ClientFactory = Callable[[BackendSettings], BackendClient]


@dataclass(slots=True)
class BackendSpec:
    """One backend, as registered by a plugin."""

    name: str
    description: str
    client_factory: ClientFactory
    capabilities: Capabilities = field(default_factory=Capabilities)
    derive_identity: Callable[[str], ModelIdentity] = identity_as_is
    cli_options: Sequence[click.Option] = ()
    """Extra ``forge serve`` options; values arrive in ``BackendSettings.options``."""
    default_url: str | None = None
    prompt_alternative: str | None = None
    """For a native-only backend: which plugin to use instead when prompt tools are needed."""
    budget_modes: tuple[str, ...] = ("backend", "manual")
    """``--budget-mode`` values the plugin honours; ``manual`` also needs a ``num_ctx`` option."""

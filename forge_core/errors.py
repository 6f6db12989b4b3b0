"""The one exception tree of forge, and its mapping to HTTP statuses.

    ForgeError
    ├── ClientError                 the client's request is wrong (4xx)
    │   ├── InvalidRequest          400 malformed JSON, missing/invalid field
    │   ├── PayloadTooLarge         413
    │   ├── ModelNotFound           404, lists the served models
    │   ├── ContextExceeded         400, names prompt size and budget
    │   └── Unauthorized            401
    ├── Overloaded                  503 with Retry-After (serialization queue full)
    │   └── ShuttingDown            503: the --drain-timeout ran out before the answer did
    ├── BackendError                the backend failed (5xx), always names the backend
    │   ├── BackendUnavailable      502 connection refused/reset, process not running
    │   ├── BackendTimeout          504
    │   ├── BackendProtocolError    502 broken envelope, unexpected types
    │   └── BackendHTTPError        the backend answered an error status: 4xx passed on, 429 as
    │                               429 and 503/529 as 503 (with its Retry-After), else 502
    └── PluginError                 start-up: plugin missing, failed to load, conflicting names

Emitters turn any of these into the OpenAI or Anthropic error shape (see ``wire``). Messages
must never contain secrets: they are shown to clients and written to logs, so every message
is scrubbed by :mod:`forge_core.redact` when the error is built.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from forge_core.redact import excerpt, scrub


class ForgeError(Exception):
    status: int = 500
    openai_type: str = "server_error"
    anthropic_type: str = "api_error"
    param: str | None = None
    code: str | None = None

    def __init__(self, message: str) -> None:
        message = scrub(message)
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        return {}


class ClientError(ForgeError):
    status = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class InvalidRequest(ClientError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PayloadTooLarge(ClientError):
    status = 413
    anthropic_type = "request_too_large"


class ModelNotFound(ClientError):
    status = 404
    anthropic_type = "not_found_error"
    code = "model_not_found"
    param = "model"

    def __init__(self, model: str, served: list[str]) -> None:
        listed = ", ".join(served) if served else "(none discovered)"
        super().__init__(f"The model '{model}' is not served here. Served models: {listed}")
        self.served = served


class ContextExceeded(ClientError):
    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, budget: int) -> None:
        super().__init__(
            f"The prompt is about {prompt_tokens} tokens but the context budget is {budget} "
            "tokens; shorten the conversation or raise the budget (--budget-mode/--num-ctx)."
        )
        self.prompt_tokens = prompt_tokens
        self.budget = budget


class Unauthorized(ClientError):
    status = 401
    openai_type = "authentication_error"
    anthropic_type = "authentication_error"
    code = "invalid_api_key"


class Overloaded(ForgeError):
    status = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ShuttingDown(Overloaded):
    """forge is stopping and the ``--drain-timeout`` ran out before this answer was done."""

    def __init__(self, drain_timeout: float | None = None) -> None:
        bound = f" within the {drain_timeout:g}s --drain-timeout" if drain_timeout else ""
        super().__init__(
            f"forge is shutting down: this request did not finish{bound}; retry it.", 1
        )


class BackendError(ForgeError):
    status = 502
    openai_type = "backend_error"
    anthropic_type = "api_error"

    def __init__(self, backend: str, reason: str) -> None:
        reason = scrub(reason)
        super().__init__(f"Backend '{backend}' {reason}")
        self.backend = backend
        self.reason = reason


class BackendUnavailable(BackendError):
    pass


class BackendTimeout(BackendError):
    status = 504
    anthropic_type = "timeout_error"


class BackendProtocolError(BackendError):
    pass


class BackendHTTPError(BackendError):
    """The backend answered with an error status.

    A 4xx is the client's fault and passed on (404 as 404, others as 400); rate limiting
    (429) and overload (503, Anthropic's 529) are passed on as such with the backend's
    ``Retry-After``, so SDKs wait and retry; anything else is a 502. ``detail`` is scrubbed
    of secrets and shortened: a gateway may echo the request's headers in its body.
    """

    def __init__(
        self,
        backend: str,
        status: int,
        detail: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        detail = excerpt(detail, MAX_DETAIL) or "(empty body)"
        super().__init__(backend, f"answered HTTP {status}: {detail}")
        self.backend_status = status
        self.detail = detail
        self.retry_headers = retry_headers(headers or {})
        if status == 429:
            self.status = 429
            self.openai_type = self.anthropic_type = "rate_limit_error"
            self.code = "rate_limit_exceeded"
        elif status in (503, 529):
            self.status = 503
            self.openai_type = "server_error"
            self.anthropic_type = "overloaded_error"
            self.code = "backend_overloaded"
        elif 400 <= status < 500 and status not in (401, 403, 407):
            # The request was wrong for this backend: a client error, passed on as such.
            self.status = 404 if status == 404 else 400
            self.openai_type = "invalid_request_error"
            self.anthropic_type = "not_found_error" if status == 404 else "invalid_request_error"

    def with_retry(self, headers: Mapping[str, str]) -> BackendHTTPError:
        """Keep the backend response's Retry-After headers; returns the same error."""
        self.retry_headers = retry_headers(headers)
        return self

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.retry_headers) if self.status in (429, 503) else {}


MAX_DETAIL = 500
"""Characters of a backend's error body kept in a message."""

_HTTP_DATE = r"[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT"
_RETRY_VALUE = {
    "retry-after": re.compile(rf"\d{{1,7}}|{_HTTP_DATE}"),
    "retry-after-ms": re.compile(r"\d{1,10}(\.\d{1,6})?"),
}


def retry_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The backend's ``Retry-After`` (seconds or HTTP date) and ``retry-after-ms``, if well
    formed; anything else is dropped rather than copied into forge's response."""
    found: dict[str, str] = {}
    for name, pattern in _RETRY_VALUE.items():
        value = headers.get(name)
        if isinstance(value, str) and pattern.fullmatch(value.strip()):
            found["Retry-After" if name == "retry-after" else name] = value.strip()
    return found


class PluginError(ForgeError):
    """A start-up problem with plugins; the CLI prints the message and exits non-zero."""

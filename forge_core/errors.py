"""The one exception tree of forge, and its mapping to HTTP statuses.

    ForgeError
    ├── ClientError                 the client's request is wrong (4xx)
    │   ├── InvalidRequest          400 malformed JSON, missing/invalid field
    │   ├── PayloadTooLarge         413
    │   ├── ModelNotFound           404, lists the served models
    │   ├── ContextExceeded         400, names prompt size and budget
    │   └── Unauthorized            401
    ├── Overloaded                  503 with Retry-After (serialization queue full)
    ├── BackendError                the backend failed (5xx), always names the backend
    │   ├── BackendUnavailable      502 connection refused/reset, process not running
    │   ├── BackendTimeout          504
    │   ├── BackendProtocolError    502 broken envelope, unexpected types
    │   └── BackendHTTPError        the backend answered an error status (4xx passed on, else 502)
    └── PluginError                 start-up: plugin missing, failed to load, conflicting names

Emitters turn any of these into the OpenAI or Anthropic error shape (see ``wire``). Messages
must never contain secrets: they are shown to clients and written to logs.
"""

from __future__ import annotations


class ForgeError(Exception):
    status: int = 500
    openai_type: str = "server_error"
    anthropic_type: str = "api_error"
    param: str | None = None
    code: str | None = None

    def __init__(self, message: str) -> None:
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


class BackendError(ForgeError):
    status = 502
    openai_type = "backend_error"
    anthropic_type = "api_error"

    def __init__(self, backend: str, reason: str) -> None:
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
    """The backend answered with an error status; a 4xx is the client's fault and passed on."""

    def __init__(self, backend: str, status: int, detail: str) -> None:
        super().__init__(backend, f"answered HTTP {status}: {detail}")
        self.backend_status = status
        self.detail = detail
        if 400 <= status < 500 and status not in (401, 403, 407):
            # The request was wrong for this backend: a client error, passed on as such.
            self.status = 404 if status == 404 else 400
            self.openai_type = "invalid_request_error"
            self.anthropic_type = "not_found_error" if status == 404 else "invalid_request_error"


class PluginError(ForgeError):
    """A start-up problem with plugins; the CLI prints the message and exits non-zero."""

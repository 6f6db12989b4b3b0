"""Registers the generic ``openai`` backend: the shared OpenAI-wire client, configured.

The backend key comes from an environment variable (``--backend-api-key-env``), never from
the client's request, and is sent as ``Authorization: Bearer``. It is never logged: it lives
only in the httpx client's default headers.
"""

from __future__ import annotations

import os
from typing import Any

import click
import httpx

from forge_core.backend import BackendSettings, BackendSpec, Capabilities
from forge_core.errors import PluginError
from forge_core.hookspecs import hookimpl
from forge_core.openai_client import OpenAIWireClient

OPTIONS = [
    click.Option(
        ["--backend-api-key-env"], default=None,
        help="Environment variable holding the backend's API key (sent as Bearer).",
    ),
    click.Option(
        ["--backend-header"], multiple=True,
        help="Extra header for every backend request, 'Name: value' (repeatable).",
    ),
    click.Option(
        ["--json-schema-retry/--no-json-schema-retry"], default=False,
        help="The endpoint supports response_format json_schema: use it to constrain retries.",
    ),
]


class GenericOpenAIClient(OpenAIWireClient):
    """An OpenAI-compatible endpoint; constrained retries only when the user vouches for them."""

    def __init__(
        self, settings: BackendSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        opts = settings.options
        headers = parse_headers(opts.get("backend_header") or ())
        key_env = opts.get("backend_api_key_env")
        if key_env:
            key = os.environ.get(key_env)
            if not key:
                raise PluginError(f"--backend-api-key-env {key_env}: that variable is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.json_schema_retry = bool(opts.get("json_schema_retry"))
        base = (settings.backend_url or "").rstrip("/")
        if base.endswith("/v1"):  # accept both http://host and http://host/v1
            base = base[: -len("/v1")]
        super().__init__(
            settings, name="openai", base_url=base, headers=headers, transport=transport
        )

    def constrain_retry(self, body: dict[str, Any], tool: dict[str, Any] | None) -> dict[str, Any]:
        """Name the tool in ``tool_choice`` (standard OpenAI), or require any tool."""
        if not self.json_schema_retry:
            return body
        if tool is None:
            return {**body, "tool_choice": "required"}
        name = tool["function"]["name"]
        return {**body, "tool_choice": {"type": "function", "function": {"name": name}}}


def parse_headers(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for number, value in enumerate(values, 1):
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            # Not quoted back: a mistyped header is most likely a credential.
            raise PluginError(
                f"--backend-header number {number} has no ':'; expected 'Name: value'"
            )
        headers[name.strip()] = content.strip()
    return headers


@hookimpl
def forge_register_backends(register) -> None:  # type: ignore[no-untyped-def]
    register(
        BackendSpec(
            name="openai",
            description="any OpenAI-compatible endpoint (LM Studio, llama-swap, hosted APIs)",
            client_factory=GenericOpenAIClient,
            capabilities=Capabilities(
                native_tools=True, prompt_tools=False, streaming=True,
                constrained_decoding=True, usage_reporting=True, managed=False,
            ),
            cli_options=OPTIONS,
            prompt_alternative="llamafile",
        )
    )

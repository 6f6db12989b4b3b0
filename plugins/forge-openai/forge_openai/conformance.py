"""How forge's conformance kit fakes this backend: the OpenAI wire, with the options a user
sets to get constrained retries and a backend key (whose value must never leak)."""

from __future__ import annotations

from forge_core.conformance import OpenAIWireHarness

KEY_ENV = "FORGE_CONFORMANCE_OPENAI_KEY"
KEY = "sk-conformance-0123456789abcdef"


def harness() -> OpenAIWireHarness:
    return OpenAIWireHarness(
        options={"json_schema_retry": True, "backend_api_key_env": KEY_ENV},
        env={KEY_ENV: KEY},
        secret=KEY,
    )

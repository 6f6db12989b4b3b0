"""Prefix stability as a property, over both client protocols.

Two requests of one session must reach the backend as prefix extensions of each other, or the
backend's prefix cache (llama-server ``cache_prompt``, vLLM prefix caching) is lost and every
turn re-reads the whole prompt. Checked here on the exact bytes the backend receives:

* translation is deterministic: the same request gives a byte-identical backend body;
* the tools go out in the same order and serialization on every turn;
* every message of turn k is sent again, unchanged, at the same position in turn k + 1;
* a retry's corrective turns come after the conversation, which is not rewritten;
* Claude Code's per-request billing header never reaches the backend.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prefix_support import (
    anthropic_requests,
    anthropic_sessions,
    canonical,
    openai_requests,
    openai_sessions,
    through_forge,
)

from forge_core.config import GuardrailSettings
from forge_core.testing import reply_text, reply_tool_call

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def assert_prefix_extensions(sent: list[dict[str, Any]]) -> None:
    """Each backend body's messages are the previous one's, then more; tools never change."""
    for before, after in zip(sent, sent[1:], strict=False):
        assert canonical(after["tools"]) == canonical(before["tools"])
        old, new = before["messages"], after["messages"]
        assert len(new) > len(old)
        for position, message in enumerate(old):
            assert canonical(new[position]) == canonical(message), f"message {position} rewritten"


# The scripted "ok" must be a final answer: a generated user turn may use a generated tool's
# words, and tool relevance would then retry the prose (not what these properties are about).
PROSE_OK = GuardrailSettings(auto_relevance=False)


@SETTINGS
@given(anthropic_sessions())
def test_anthropic_session_turns_reach_the_backend_as_prefix_extensions(
    session: dict[str, Any],
) -> None:
    bodies = anthropic_requests(session)
    raw, statuses = through_forge(
        "/v1/messages", bodies, [reply_text("ok")] * len(bodies), guardrails=PROSE_OK
    )
    assert statuses == [200] * len(bodies)
    sent = [json.loads(r) for r in raw]
    assert_prefix_extensions(sent)
    assert not any(b"x-anthropic-billing-header" in r for r in raw)


@SETTINGS
@given(openai_sessions())
def test_openai_session_turns_reach_the_backend_as_prefix_extensions(
    session: dict[str, Any],
) -> None:
    bodies = openai_requests(session)
    raw, statuses = through_forge(
        "/v1/chat/completions", bodies, [reply_text("ok")] * len(bodies), guardrails=PROSE_OK
    )
    assert statuses == [200] * len(bodies)
    sent = [json.loads(r) for r in raw]
    assert_prefix_extensions(sent)
    # forge adds nothing to the client's messages on a clean attempt.
    for body, got in zip(bodies, sent, strict=True):
        assert canonical(got["messages"]) == canonical(body["messages"])


@SETTINGS
@given(st.one_of(anthropic_sessions(), openai_sessions()))
def test_the_same_request_gives_byte_identical_backend_bodies(session: dict[str, Any]) -> None:
    anthropic = "headers" in session
    body = (anthropic_requests if anthropic else openai_requests)(session)[-1]
    path = "/v1/messages" if anthropic else "/v1/chat/completions"
    raw, statuses = through_forge(path, [body, body], [reply_text("ok")] * 2, guardrails=PROSE_OK)
    assert statuses == [200, 200]
    assert raw[0] == raw[1]


@SETTINGS
@given(anthropic_sessions())
def test_a_changing_billing_header_does_not_change_the_backend_body(
    session: dict[str, Any],
) -> None:
    body = anthropic_requests({**session, "headers": []})[-1]
    first = {**body, "system": [{"type": "text", "text": "x-anthropic-billing-header: cch=aaaaa;"},
                                *body["system"]]}
    second = {**body, "system": [{"type": "text", "text": "x-anthropic-billing-header: cch=bbbbb;"},
                                 *body["system"]]}
    raw, _ = through_forge(
        "/v1/messages", [first, second, body], [reply_text("ok")] * 3, guardrails=PROSE_OK
    )
    assert raw[0] == raw[1] == raw[2]


@SETTINGS
@given(st.one_of(anthropic_sessions(), openai_sessions()), st.booleans())
def test_a_retry_appends_after_the_conversation_without_rewriting_it(
    session: dict[str, Any], stream: bool
) -> None:
    anthropic = "headers" in session
    body = {**(anthropic_requests if anthropic else openai_requests)(session)[-1], "stream": stream}
    path = "/v1/messages" if anthropic else "/v1/chat/completions"
    # An unknown tool is rejected: forge retries with corrective turns, then gets prose.
    replies = [reply_tool_call("no_such_tool", {"a": 1}), reply_text("done")]
    raw, statuses = through_forge(path, [body], replies)
    assert statuses == [200] and len(raw) == 2
    first, retry = (json.loads(r) for r in raw)
    assert canonical(retry["tools"]) == canonical(first["tools"])
    old, new = first["messages"], retry["messages"]
    assert len(new) > len(old)
    for position, message in enumerate(old[:-1]):
        assert canonical(new[position]) == canonical(message), f"message {position} rewritten"
    # The client's last message is either kept, or (same role, plain text) extended in place:
    # the only merge allowed is where the corrective turns join on.
    last, joined = old[-1], new[len(old) - 1]
    if canonical(joined) != canonical(last):
        assert joined["role"] == last["role"]
        assert canonical(joined["content"]).startswith(canonical(last["content"])[:-1])

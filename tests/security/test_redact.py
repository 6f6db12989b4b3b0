"""The redaction module on its own: what counts as a secret and how it is scrubbed."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote, quote_plus

from forge_core import redact


def test_scrub_removes_known_secrets_in_every_encoding() -> None:
    secret = 'tok"en/with+odd=chars'
    redact.register(secret)
    for form in (secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)):
        out = redact.scrub(f"before {form} after")
        assert form not in out and "before" in out and "after" in out


def test_scrub_removes_credential_header_values_it_was_never_told_about() -> None:
    text = (
        'Authorization: Bearer abcdefghijklmnop\n{"x-api-key": "sk-zzzzzzzzzzzz"}\n'
        "proxy-authorization=Basic dXNlcjpwYXNzd29yZA==\nunrelated: value"
    )
    out = redact.scrub(text)
    for gone in ("abcdefghijklmnop", "sk-zzzzzzzzzzzz", "dXNlcjpwYXNzd29yZA=="):
        assert gone not in out
    assert "unrelated: value" in out


def test_short_values_are_not_treated_as_secrets() -> None:
    redact.register("ab")  # a two-letter header value would shred every message
    assert redact.scrub("about a backend") == "about a backend"


def test_display_url_drops_userinfo_and_query() -> None:
    shown = redact.display_url("http://u:p4ssword@host:8080/v1?key=abc#frag")
    assert shown == "http://host:8080/v1"


def test_header_values_count_as_secrets_by_name_or_length() -> None:
    redact.register_headers(
        {"X-Team": "tools", "X-Api-Token": "tk-9", "X-Org": "org-5512-acme", "Accept": "text/a-b-c"}
    )
    out = redact.scrub("tools tk-9 org-5512-acme text/a-b-c")
    assert out == "tools [redacted] [redacted] text/a-b-c"


def test_every_log_record_is_scrubbed_traceback_included() -> None:
    redact.install_logging()
    redact.register("log-secret-Qw8Zr4")
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(logging.Formatter("%(message)s").format(record))

    logger = logging.getLogger("some.library.forge.never.configured")
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("key is %s", "log-secret-Qw8Zr4")
        try:
            raise RuntimeError("failed with log-secret-Qw8Zr4")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    assert lines and all("log-secret-Qw8Zr4" not in line for line in lines)
    assert "[redacted]" in lines[0] and "RuntimeError" in lines[1]

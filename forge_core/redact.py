"""The one place that knows every configured secret and scrubs them from what forge emits.

Secrets are registered where they enter the process: forge's own key (``make_app``), a
backend client's headers (``Authorization``, ``x-api-key``, every ``--backend-header`` value)
and the userinfo of a backend URL. :func:`scrub` then removes them, in the encodings a
backend or gateway might echo them in (raw, JSON-escaped, URL-encoded, HTTP Basic), from
any text, and also removes the value of any credential header it finds (``Authorization:
Bearer ...``, ``"x-api-key": "..."``) whether or not it knew that value.

Error messages are scrubbed when a :class:`~forge_core.errors.ForgeError` is built, and
:func:`install_logging` scrubs every log record of every logger, so neither a response
nor a log line can carry a secret.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

import httpx

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4
"""Shorter values are not scrubbed: they are no secret and would shred every message."""
MIN_PLAIN_HEADER_SECRET = 8
"""A ``--backend-header`` whose name says nothing of credentials (``X-Team: tools``) counts as
a secret only from this length: short plain words would be redacted from every message."""
_PLAIN_HEADERS = frozenset(
    {"content-type", "accept", "accept-encoding", "user-agent", "connection",
     "anthropic-version", "anthropic-beta"}
)
_SECRET_HEADER_NAME = re.compile(r"auth|key|token|secret|pass|cookie|session|sign", re.I)

_CREDENTIAL_NAMES = (
    r"proxy-authorization|authorization|x-api-key|api[-_]key|x-goog-api-key|"
    r"access[-_]token|cookie|set-cookie"
)
# A credential header or field and its value: "Authorization: Bearer x", '"x-api-key": "x"',
# "api_key=x", also inside JSON-escaped text ("...\\nauthorization: ..."). The value ends at
# a quote, line end, or separator.
_CREDENTIAL_FIELD = re.compile(
    rf"""(?P<name>["']?(?:(?<=\\[nrt])|(?<![A-Za-z0-9-]))(?:{_CREDENTIAL_NAMES})\b["']?\s*[:=]\s*)"""
    r"""(?P<value>"[^"\r\n]*"|'[^'\r\n]*'|(?:(?:bearer|basic|token|digest)[ \t]+)?"""
    r"""[^\s"',;&}\]\\]+)""",
    re.IGNORECASE,
)
_SCHEME_TOKEN = re.compile(r"\b(?P<scheme>bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)


class Redactor:
    """A set of secrets and the compiled pattern that finds any of them."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()  # registration may come from a client in another thread

    def add(self, secret: str | None, min_length: int = MIN_SECRET_LENGTH) -> None:
        """Scrub ``secret`` (and its JSON/URL encodings) from now on."""
        if not secret or len(secret) < max(min_length, MIN_SECRET_LENGTH):
            return
        forms = {secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)}
        with self._lock:
            new = {f for f in forms if len(f) >= MIN_SECRET_LENGTH} - self._secrets
            if not new:
                return
            self._secrets |= new
            # Longest first, so a secret containing another is removed whole.
            alternatives = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in alternatives))

    def add_header_values(self, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        """The values of configured backend headers, and a token after an auth scheme."""
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            if name.lower() in _PLAIN_HEADERS:
                continue
            credential = bool(_SECRET_HEADER_NAME.search(name))
            self.add(value, MIN_SECRET_LENGTH if credential else MIN_PLAIN_HEADER_SECRET)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                self.add(token.strip())

    def add_url(self, url: str | None) -> None:
        """The password of a URL's userinfo, ``user:password`` and its Basic encoding."""
        if not url:
            return
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            return
        if not parsed.userinfo:
            return
        userinfo = parsed.userinfo.decode("ascii", "replace")
        self.add(parsed.password)
        self.add(userinfo)
        plain = f"{parsed.username}:{parsed.password or ''}"
        self.add(plain)
        self.add(base64.b64encode(plain.encode()).decode())
        self.add(base64.b64encode(userinfo.encode()).decode())

    def scrub(self, text: str) -> str:
        """``text`` without any registered secret or credential header value."""
        if not text:
            return text
        text = _CREDENTIAL_FIELD.sub(_redact_field, text)
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        return _SCHEME_TOKEN.sub(lambda m: f"{m['scheme']} {REDACTED}", text)


def _redact_field(match: re.Match[str]) -> str:
    value = match["value"]
    if REDACTED[:-1] in value:  # already scrubbed: scrubbing twice changes nothing
        return match.group(0)
    quote_char = value[0] if value[:1] in "\"'" else ""
    return f"{match['name']}{quote_char}{REDACTED}{quote_char}"


SECRETS = Redactor()
"""The process's secrets: one set, because log lines of every component must be scrubbed."""

register = SECRETS.add
register_headers = SECRETS.add_header_values
register_url = SECRETS.add_url
scrub = SECRETS.scrub


def excerpt(text: str, limit: int = 500) -> str:
    """A scrubbed, shortened piece of a backend's body (scrubbed first: a cut must never leave
    half a secret behind)."""
    cleaned = scrub(text.strip())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def display_url(url: str) -> str:
    """A URL fit for messages, logs and ``/ready``: no userinfo, query or fragment."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "(invalid URL)"
    if not parsed.host:
        return scrub(url.split("?", 1)[0].split("#", 1)[0])
    shown = parsed.copy_with(username=None, password=None, query=None, fragment=None)
    return str(shown).rstrip("/")


# --- logging ----------------------------------------------------------------------------------


class RedactingFilter(logging.Filter):
    """Scrubs a record's message, arguments and traceback text in place; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


def scrub_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string is logging's own problem to report
        return
    cleaned = scrub(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = scrub(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)


_installed = False
_install_lock = threading.Lock()


def install_logging() -> None:
    """Scrub every log record of every logger from now on (idempotent).

    Done in the record factory rather than on handlers, so records reach every handler (the
    CLI's, uvicorn's own, a test's) already clean, however the handlers are configured.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()
        redacting = RedactingFilter()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            redacting.filter(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True

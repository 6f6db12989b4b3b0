"""The request inspector: the last N chat requests, redacted, as JSON and as a small page.

For each request it keeps what the client sent, every backend attempt (the body forge sent, the
backend's output, forge's verdict) and what the client got. Memory is bounded twice: N records,
and each captured body is cut at :data:`~forge_core.observe.CAPTURE_LIMIT` bytes.
"""

from __future__ import annotations

import collections
import datetime
import html
import json
import re
from collections.abc import Iterable
from typing import Any

from forge_core.observe import CAPTURE_LIMIT, RequestRecord

try:  # the process-wide secrets (backend keys, header values, URL passwords)
    from forge_core.redact import scrub as _scrub_known
except ImportError:  # pragma: no cover - older core without it
    _scrub_known = None

REDACTED = "[redacted]"
SECRET_FIELDS = re.compile(r"(?i)^(authorization|x-api-key|api[-_]?key|password|secret|"
                           r"client[-_]secret|access[-_]token|refresh[-_]token|cookie)$")
"""Object keys whose values are dropped wherever they appear in a captured body."""


class Redactor:
    """Removes configured secret values from any string and secret-looking fields, and whatever
:mod:`forge_core.redact` knows as a secret of this process."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Short values would blank ordinary words; keys are long.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return _scrub_known(value) if _scrub_known is not None else value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                k: REDACTED if isinstance(k, str) and SECRET_FIELDS.match(k) else self.value(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


def secrets_of(config: Any) -> list[str]:
    """forge's own key and any plugin option that looks like a credential."""
    found = [config.api_key] if config.api_key else []
    for name, value in (config.backend.options or {}).items():
        if isinstance(value, str) and re.search(r"(?i)key|token|secret|password", name):
            found.append(value)
    return found


class Inspector:
    """A bounded ring of the last ``size`` chat requests."""

    def __init__(self, size: int, redactor: Redactor) -> None:
        self.size = size
        self.redactor = redactor
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self.seen = 0

    def add(self, record: RequestRecord) -> None:
        if not record.capture:
            return
        self.seen += 1
        # Turned into plain data now: the record's objects must not be kept alive.
        self.records.append(self.redactor.value(_entry(self.seen, record)))

    def snapshot(self) -> dict[str, Any]:
        return {"size": self.size, "seen": self.seen, "requests": list(reversed(self.records))}


def _body(data: bytes, cut: int, sse: bool = False) -> Any:
    text = data.decode("utf-8", errors="replace")
    if cut:
        return {"text": text, "truncated_bytes": cut}
    if sse:
        return {"events": _sse_events(text)}
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return {"text": text}


def _bounded(value: Any) -> Any:
    """``value`` itself if its JSON fits the capture limit, else its cut JSON text."""
    if value is None:
        return None
    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= CAPTURE_LIMIT:
        return value
    return {"text": text[:CAPTURE_LIMIT], "truncated_bytes": len(text) - CAPTURE_LIMIT}


def _sse_events(text: str) -> list[Any]:
    events: list[Any] = []
    for block in text.split("\n\n"):
        data = [line[5:].strip() for line in block.splitlines() if line.startswith("data:")]
        if not data:
            continue
        joined = "\n".join(data)
        try:
            events.append(json.loads(joined))
        except ValueError:
            events.append(joined)
    return events


def verdict(notes: list[str], last: bool, error: str | None) -> str:
    if error:
        return "backend error"
    if any(n.startswith(("retries-exhausted", "retry-failed")) for n in notes):
        return "gave up: answered as text"
    if any(n.startswith("retry:") for n in notes):
        return "rejected: retried"
    return "accepted" if last else "superseded"


def _entry(number: int, record: RequestRecord) -> dict[str, Any]:
    notes_by_attempt = record.attempt_notes()
    attempts = []
    for attempt, notes in zip(record.attempts, notes_by_attempt, strict=True):
        last = attempt is record.attempts[-1]
        attempts.append({
            "index": attempt.index,
            "streamed": attempt.streamed,
            "ms": round(attempt.seconds * 1000, 2),
            "first_chunk_ms": None if attempt.first_chunk is None
            else round(attempt.first_chunk * 1000, 2),
            "sent": _bounded(attempt.sent),
            "output": _bounded(attempt.output),
            "error": attempt.error,
            "notes": notes,
            "verdict": verdict(notes, last, attempt.error),
            "usage": None if attempt.usage is None else attempt.usage.as_openai(),
        })
    sse = record.headers.get("content-type", "").startswith("text/event-stream")
    request = _body(bytes(record.request_body), record.request_cut)
    return {
        "id": number,
        "time": datetime.datetime.fromtimestamp(record.wall, datetime.UTC).isoformat(
            timespec="milliseconds"),
        "method": record.method,
        "path": record.path,
        "protocol": record.protocol,
        "model": request.get("model") if isinstance(request, dict) else None,
        "status": record.status,
        "streamed": record.streamed,
        "ms": round(record.seconds * 1000, 2),
        "backend_ms": round(record.backend_seconds * 1000, 2),
        "guardrails": record.notes,
        "request": request,
        "attempts": attempts,
        "response": _body(bytes(record.response_body), record.response_cut, sse),
    }


# --- the page ----------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 20px}
header h1{margin:0;font-size:18px} header p{margin:4px 0 0;color:#b8c0d0}
main{padding:16px 20px;max-width:1200px}
details.req{background:#fff;border:1px solid #d8dce4;border-radius:6px;margin:0 0 10px}
details.req>summary{cursor:pointer;padding:8px 12px;display:flex;gap:14px;align-items:center}
.st{font-weight:600;border-radius:4px;padding:1px 7px;color:#fff;background:#2e7d32}
.st.e4{background:#b26a00}.st.e5{background:#c62828}
.note{background:#e8eefc;color:#23408e;border-radius:4px;padding:1px 6px;margin-right:4px;
font-size:12px}
.path{font-family:ui-monospace,monospace}.muted{color:#6b7385}
section{padding:4px 14px 10px;border-top:1px solid #eceff4}
section h3{font-size:13px;margin:8px 0 4px;text-transform:uppercase;letter-spacing:.04em;
color:#4a5366}
.attempt{border-left:3px solid #9aa5b8;padding-left:10px;margin:8px 0}
.attempt.ok{border-color:#2e7d32}.attempt.bad{border-color:#c62828}
pre{background:#f1f3f7;border-radius:4px;padding:8px;overflow:auto;max-height:320px;margin:4px 0;
font:12px/1.4 ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}
.empty{color:#6b7385;padding:30px 0}
"""


def _pre(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    return f"<pre>{html.escape(text)}</pre>"


def _status_class(status: int) -> str:
    return "st e5" if status >= 500 else "st e4" if status >= 400 else "st"


def render_page(snapshot: dict[str, Any]) -> str:
    """A self-contained HTML page (inline style, no script, no external assets)."""
    rows = []
    for entry in snapshot["requests"]:
        notes = "".join(f'<span class="note">{html.escape(n)}</span>' for n in entry["guardrails"])
        attempts = []
        for attempt in entry["attempts"]:
            good = attempt["verdict"] == "accepted"
            attempts.append(
                f'<div class="attempt {"ok" if good else "bad"}"><b>attempt {attempt["index"]}'
                f'</b> · {html.escape(attempt["verdict"])} · {attempt["ms"]} ms'
                + "".join(f' <span class="note">{html.escape(n)}</span>' for n in attempt["notes"])
                + (f'<div>error: {html.escape(attempt["error"])}</div>' if attempt["error"] else "")
                + (f"<div class=muted>backend output</div>{_pre(attempt['output'])}"
                   if attempt["output"] is not None else "")
                + (f"<details><summary class=muted>body forge sent</summary>"
                   f"{_pre(attempt['sent'])}</details>" if attempt["sent"] is not None else "")
                + "</div>"
            )
        rows.append(
            f'<details class="req"><summary><span class="{_status_class(entry["status"])}">'
            f'{entry["status"]}</span><span class="path">{html.escape(entry["method"])} '
            f'{html.escape(entry["path"])}</span><span>{html.escape(str(entry["model"] or ""))}'
            f'</span><span class="muted">{"stream" if entry["streamed"] else "json"} · '
            f'{entry["ms"]} ms · {len(entry["attempts"])} attempt(s)</span><span>{notes}</span>'
            f'<span class="muted">#{entry["id"]} {html.escape(entry["time"])}</span></summary>'
            f"<section><h3>Client request</h3>{_pre(entry['request'])}</section>"
            f"<section><h3>Attempts</h3>{''.join(attempts) or '<i>none</i>'}</section>"
            f"<section><h3>What the client got</h3>{_pre(entry['response'])}</section>"
            "</details>"
        )
    body = "".join(rows) or (
        '<p class="empty">No chat request yet. Send one to /v1/chat/completions or '
        "/v1/messages and reload this page.</p>"
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<title>forge inspector</title>"
        f"<style>{_STYLE}</style></head><body><header><h1>forge inspector</h1>"
        f"<p>The last {snapshot['size']} chat requests, newest first "
        f"({snapshot['seen']} seen since start; secrets redacted). "
        "JSON: <a style='color:#9cc1ff' href='/forge/requests'>/forge/requests</a>"
        "</p></header>"
        f"<main>{body}</main></body></html>"
    )

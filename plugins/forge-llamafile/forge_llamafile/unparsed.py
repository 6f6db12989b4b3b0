"""llama-server's "could not parse the model's output" errors, and the text they carry.

When llama-server's tool-call parser (the PEG parser built from the chat template) fails on
what the model wrote, the request fails with HTTP 500 (or, streamed, an error event after
the 200)::

    {"error": {"code": 500, "type": "server_error",
               "message": "Failed to parse input at pos 395: <|tool_call_start|>[...]"}}

The message is ``"Failed to parse input at pos " + pos + ": " + input.substr(pos)``
(``common_chat_peg_parse`` in llama.cpp's ``common/chat.cpp``): the model's own text from
where parsing failed, usually the whole call. Reported in ggml-org/llama.cpp issues #23838
(LFM2.5), #24644 (Qwen 3.6 XML), #20532 (gpt-oss). Newer builds answer "The model produced
output that does not match the expected <format> format" without the text. Either way it is
the model's malformed call, not a broken server: forge rescues from the text, or retries.
"""

from __future__ import annotations

import json
import re

_WITH_TEXT = re.compile(r"Failed to parse input at pos \d+: ", re.S)
_WITHOUT_TEXT = re.compile(r"model produced output that does not match the expected .*format")


def unparsed_text(body: str) -> str | None:
    """The model's text in a parse-failure error body ("" when the body has none), or None
    when the body is not a parse failure."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        return None
    match = _WITH_TEXT.match(message)
    if match is not None:
        return message[match.end() :]
    return "" if _WITHOUT_TEXT.search(message) else None

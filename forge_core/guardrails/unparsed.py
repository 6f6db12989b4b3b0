"""The error a backend client raises when the server could not parse the model's output.

llama-server answers HTTP 500 "Failed to parse input at pos N: <text>" when its tool-call
parser fails on what the model wrote (see the llamafile plugin's ``unparsed.py``). That is a
malformed call, the model's mistake, not a broken server: the engine judges ``text`` like
any answer (rescue, repair, retry) instead of answering 502.
"""

from __future__ import annotations

from forge_core.errors import BackendHTTPError


class UnparsedOutput(BackendHTTPError):
    """``text``: the model's raw output as the server returned it ("" when it did not)."""

    def __init__(self, backend: str, status: int, detail: str, text: str) -> None:
        super().__init__(backend, status, detail)
        self.text = text

"""decode_at gives what ``raw_decode(text, pos)`` gives, whatever its window cuts."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from forge_core.guardrails import jsonscan
from forge_core.guardrails.jsonscan import DECODER, DecodeFailed, decode_at

PIECES = [
    "{", "}", "[", "]", '"', ":", ",", " ", "\n", "\\", "\\u00e9", "\\u12", "true", "tru",
    "null", "-", "12", "1e5", "0.5", "NaN", '"name"', '"a b"', "x",
]


def outcome(call: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", call(*args)
    except DecodeFailed as exc:
        return "failed", exc.pos
    except json.JSONDecodeError as exc:
        return "failed", exc.pos
    except ValueError:
        return "value", None
    except RecursionError:
        return "deep", None


@pytest.mark.parametrize("window", [1, 8, 32, 4096])
def test_every_cut_decodes_like_raw_decode(window: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonscan, "WINDOW", window)
    rng = random.Random(window)
    samples = [
        json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "n": [1, 2.5e3]}}),
        '[{"a": "x\\n\\u00e9"}, 12345678901234567890]',
        '{"unterminated": "abc',
        '{"a": tru',
    ]
    samples += ["".join(rng.choices(PIECES, k=rng.randint(1, 60))) for _ in range(400)]
    for text in samples:
        for pos in range(len(text)):
            assert outcome(decode_at, text, pos) == outcome(DECODER.raw_decode, text, pos), (
                text, pos,
            )


def test_a_failure_reads_near_its_position_not_from_the_text_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many openings that do not decode: each attempt hands the decoder one small
    window (the error's line count ran over everything before it)."""
    handed = 0
    decode = DECODER.raw_decode

    def counted(doc: str, start: int = 0) -> Any:
        nonlocal handed
        handed += len(doc) - start
        return decode(doc, start)

    monkeypatch.setattr(DECODER, "raw_decode", counted)
    text = "[TOOL_CALLS]" * 20_000
    for pos in range(0, len(text), len("[TOOL_CALLS]")):
        with pytest.raises(DecodeFailed):
            decode_at(text, pos)
    assert handed <= 20_000 * jsonscan.WINDOW  # raw_decode(text, pos): 120 MB

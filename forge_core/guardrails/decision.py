"""The decision retry under ``tool_choice: auto`` (``--auto-intent decide``).

A small model offered tools often answers a request it could serve with a refusal ("I can't
access real-time weather data") or a description of what it would do ("Here's a Python
function that ..."), without naming any tool, so neither the intent signals nor the
relevance ranking catch it. With ``decide``, such an answer gets one retry constrained to a
choice: one call of an offered tool, or ``respond(message)``, the escape for an answer in
prose. A ``respond`` answer is final: it becomes the assistant's text.

The patterns describe the *kind* of answer (a refusal, instructions, code), not a request's
wording; they are English only.
"""

from __future__ import annotations

import re

from forge_core.guardrails.rescue import strip_think
from forge_core.guardrails.validate import Problem

_DESCRIBES = re.compile(
    r"\bI(?:'m| am)? (?:sorry,? )?(?:but )?(?:can't|cannot|can not|am unable to|am not able to|"
    r"unable to|not able to|don't have|do not have)\b"
    r"|\bas an (?:AI|artificial intelligence|language model)\b"
    r"|\breal[- ]time\b|\bup[- ]to[- ]date (?:information|data)\b"
    r"|\byou (?:can|could|would need to|need to|should|may want to) (?:use|call|try|run|check|"
    r"visit|look)\b"
    r"|\bhere(?:'s| is) (?:a |an |the |how |some )?(?:\w+ ){0,2}(?:function|code|script|"
    r"example|snippet|command|program|implementation)\b"
    r"|^[ \t]*```",
    re.IGNORECASE | re.MULTILINE,
)
MAX_CHARS = 2000
"""The part of the answer that is looked at (a refusal or a description shows early)."""


def describes(text: str) -> bool:
    """Does ``text`` refuse, or describe how to do the task, rather than answer it?"""
    return _DESCRIBES.search(strip_think(text)[:MAX_CHARS]) is not None


PROBLEM = Problem(
    "tool_decision",
    None,
    None,
    "the answer describes the task instead of doing it: call a tool, or respond in prose",
)

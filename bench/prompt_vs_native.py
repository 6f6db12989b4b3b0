"""The prompt capability against native tool calling, on the same model and prompts.

Reuses ``bench/guardrail_rate.py`` (its prompts, its judge, its runner) with modes that differ
only in ``--backend-capability``: ``native`` sends the client's ``tools`` to llama-server, whose
hermes template renders them; ``prompt`` has forge render the tools into the system prompt and
send none, then parse the model's text back into calls. Each is measured on the first attempt
alone (``--max-retries 0``), with corrective retries only, and with forge's full guardrails
(constrained retries).

Usage::

    .venv/bin/python bench/prompt_vs_native.py                  # launches llama-server + SmolLM2
    .venv/bin/python bench/prompt_vs_native.py --backend-url http://127.0.0.1:8080 --limit 5
    .venv/bin/python bench/prompt_vs_native.py --modes native-0,prompt-0 --json out.json

Options are those of ``guardrail_rate.py``; figures go to docs/prompt-capability.md.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import guardrail_rate  # noqa: E402 - a sibling script, not a package
from guardrail_rate import Mode  # noqa: E402

PROMPT = ["--backend-capability", "prompt"]
UNCONSTRAINED = ["--max-retries", "3", "--no-constrained-retry"]

COMPARISON: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("direct", "llama-server alone, native tools (hermes template)", None),
        Mode("native-0", "forge native: first attempt only (validation + rescue)",
             ["--max-retries", "0"]),
        Mode("prompt-0", "forge prompt: first attempt only (tools in the system prompt)",
             ["--max-retries", "0", *PROMPT]),
        Mode("native-retry", "forge native: + corrective retries, unconstrained", UNCONSTRAINED),
        Mode("prompt-retry", "forge prompt: + corrective retries, unconstrained",
             [*UNCONSTRAINED, *PROMPT]),
        Mode("native", "forge native: full guardrails (constrained retries)",
             ["--max-retries", "3"]),
        Mode("prompt", "forge prompt: full guardrails (constrained retries)",
             ["--max-retries", "3", *PROMPT]),
    )
}


def main() -> int:
    guardrail_rate.MODES.clear()
    guardrail_rate.MODES.update(COMPARISON)
    args = guardrail_rate.parse_args()
    return asyncio.run(guardrail_rate.main(args))


if __name__ == "__main__":
    sys.exit(main())

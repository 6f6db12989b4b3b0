"""How often a small model's answer is the *right* tool call: directly, and through forge.

Runs the prompts of ``bench/prompts/correctness.jsonl`` (tools from ``bench/prompts/tools.json``)
against a real llama-server, once per mode, one request at a time, non-streamed, temperature 0.
Every tool prompt carries the tool it calls for and the argument values the user gave; the
prose prompts (greetings, questions the tools cannot answer, the final answer after a tool
result) expect no call. Per mode it prints:

* ``correct``: tool prompts answered with a valid call of the expected tool whose arguments
  contain the expected values (:func:`matches`: strings compared case- and whitespace-
  insensitively, numbers numerically, only the expected keys; ``$any`` lists alternatives,
  ``$contains`` a substring); prose prompts answered in prose;
* ``usable``: a valid call (any tool) or honest prose: what a client can act on;
* ``broken``: an invalid call, or call markup / JSON returned as the text, reaching the client
  (must be 0 through forge);
* mean and p90 seconds per answer, and backend calls per answer (from forge's
  ``x-forge-guardrail`` header: 1 + one per ``retry:`` note).

Validation here is independent of forge's own (``jsonschema`` directly).

Modes are data (:data:`MODES`): forge command-line arguments (None: straight to llama-server),
an optional ``tool_choice`` override (``required`` keeps a named choice, ``auto`` replaces
every choice) and the ``one-constrained`` baseline, which sends no tools but one JSON schema
for the offered tools (``anyOf`` of ``{name: const, arguments: <parameters>}``), with the output
room forge gives a constrained retry (``CALL_ROOM`` tokens), and reads the answer's JSON as the
call, as a client doing its own constrained decoding would. Prose prompts
run only in modes whose choice can allow prose. A new mode is one entry; ``--modes`` picks.

Usage::

    .venv/bin/python bench/guardrail_rate.py                    # launches llama-server + SmolLM2
    .venv/bin/python bench/guardrail_rate.py --model gemma3-270m
    .venv/bin/python bench/guardrail_rate.py --backend-url http://127.0.0.1:8080
    .venv/bin/python bench/guardrail_rate.py --modes direct,forge-required --limit 5 --json o.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from jsonschema import Draft202012Validator

from forge_core.engine import CALL_ROOM
from forge_core.managed import ManagedProcess, free_port

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "prompts" / "correctness.jsonl"
TOOLS = HERE / "prompts" / "tools.json"


@dataclass(frozen=True)
class Mode:
    """One way of sending the prompts: straight to the backend, or through forge."""

    name: str
    description: str
    forge_args: list[str] | None
    """``forge serve`` arguments (besides plugin, backend URL and port); None: no forge."""
    choice: Literal["required", "auto"] | None = None
    """Override of each prompt's tool_choice (``required`` keeps a named choice)."""
    one_constrained: bool = False
    """The baseline: no tools, one JSON schema for the offered tools, the JSON read as the call."""


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("direct", "llama-server alone, tool_choice required", None, "required"),
        Mode(
            "one-constrained",
            "llama-server alone, one request constrained to the offered tools (baseline)",
            None, "required", one_constrained=True,
        ),
        Mode("forge-auto", "forge defaults, tool_choice auto", [], "auto"),
        Mode("forge-required", "forge defaults, tool_choice required", [], "required"),
        Mode(
            "feedback-schema",
            "forge, required: failed turn + correction, JSON-schema constraint without tools "
            "(the strategy before issue 10)",
            ["--retry-context", "feedback", "--constrain-with", "schema"], "required",
        ),
        Mode(
            "clean-schema",
            "forge, required: clean context, JSON-schema constraint without tools",
            ["--retry-context", "clean", "--constrain-with", "schema"], "required",
        ),
        Mode(
            "feedback-grammar",
            "forge, required: failed turn + correction, compact grammar + tool descriptions",
            ["--retry-context", "feedback", "--constrain-with", "grammar"], "required",
        ),
        Mode(
            "auto-signals",
            "forge, auto: tool intent from signals in the answer only (no tool relevance)",
            ["--tool-relevance", "off"], "auto",
        ),
        Mode(
            "auto-decide",
            "forge, auto: also a decision retry (a call or respond()) for refusals and "
            "descriptions",
            ["--auto-intent", "decide"], "auto",
        ),
        Mode(
            "required-no-relevance",
            "forge, required: constrained retries among several tools offer them all",
            ["--tool-relevance", "off"], "required",
        ),
        Mode(
            "grammar-avoid",
            "forge, required, the grammar refusing placeholder values",
            ["--constrain-with", "grammar-avoid"], "required",
        ),
        Mode(
            "auto-grammar-avoid",
            "forge, auto, the grammar refusing placeholder values",
            ["--constrain-with", "grammar-avoid"], "auto",
        ),
        Mode(
            "no-placeholder",
            "forge defaults, required, placeholder check off",
            ["--no-placeholder-check"], "required",
        ),
        Mode(
            "unconstrained",
            "forge, required: corrective retries only (no constrained decoding)",
            ["--no-constrained-retry"], "required",
        ),
    )
}
DEFAULT_MODES = ["direct", "one-constrained", "forge-auto", "forge-required"]


# --- prompts -----------------------------------------------------------------------------------


@dataclass
class Prompt:
    id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    tool_choice: Any
    expect: dict[str, Any] | None
    """``{"tool": name, "args": {...}}``; None: the right answer is prose."""


def load_prompts(path: Path, tools_path: Path) -> list[Prompt]:
    catalog = json.loads(tools_path.read_text())
    prompts = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        raw = json.loads(line)
        messages = [{"role": "system", "content": raw["system"]}] if raw.get("system") else []
        messages += raw.get("messages") or [{"role": "user", "content": raw["prompt"]}]
        tools = [
            {"type": "function", "function": {"name": name, **catalog[name]}}
            for name in raw["tools"]
        ]
        choice = raw.get("tool_choice", "auto")
        if isinstance(choice, dict):
            choice = {"type": "function", "function": {"name": choice["name"]}}
        prompts.append(Prompt(raw["id"], messages, tools, choice, raw.get("expect")))
    return prompts


def choice_for(prompt: Prompt, mode: Mode) -> Any | None:
    """The tool_choice to send, or None when ``mode`` cannot ask ``prompt`` fairly."""
    if mode.choice == "auto":
        return "auto"
    if mode.choice == "required":
        if prompt.expect is None:
            return None  # a prose prompt under a required choice has no right answer
        return prompt.tool_choice if isinstance(prompt.tool_choice, dict) else "required"
    return prompt.tool_choice


# --- judging -----------------------------------------------------------------------------------


def _norm(value: str) -> str:
    return re.sub(r"\s+", "", value).casefold()


def matches(expected: Any, actual: Any) -> bool:
    """Does ``actual`` carry the ``expected`` value? Objects: the expected keys only."""
    if isinstance(expected, dict) and "$any" in expected:
        return any(matches(option, actual) for option in expected["$any"])
    if isinstance(expected, dict) and "$contains" in expected:
        return isinstance(actual, str) and _norm(expected["$contains"]) in _norm(actual)
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and matches(value, actual[key]) for key, value in expected.items()
        )
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return False
        remaining = list(actual)
        for item in expected:  # order-insensitive
            found = next((i for i, a in enumerate(remaining) if matches(item, a)), None)
            if found is None:
                return False
            remaining.pop(found)
        return True
    if isinstance(expected, str):
        return isinstance(actual, str) and _norm(expected) == _norm(actual)
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return math.isclose(expected, actual)
    return bool(expected == actual)


# Call-shaped text a client would receive as the assistant's prose: call markup that holds a
# call (an echoed "put calls within <tool_call></tool_call> tags" holds none), or JSON naming
# an offered tool (code that builds a dict with a "name" key of its own is prose).
_CALL_MARKUP = re.compile(r"<tool_call>\s*[{\[]|<function=\w|\[TOOL_CALLS\]\s*\S")


def call_text(content: str, tool_names: list[str]) -> bool:
    if _CALL_MARKUP.search(content):
        return True
    return any(
        re.search(r'"(name|function)"\s*:\s*"' + re.escape(name) + '"', content)
        for name in tool_names
    )


def calls_from_content(content: str) -> list[dict[str, Any]]:
    """The baseline's JSON answer as OpenAI tool calls ([] when it is not a whole call)."""
    try:
        value = json.loads(content)
    except ValueError:
        return []
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return []
    arguments = value.get("arguments")
    return [{"id": "baseline", "type": "function",
             "function": {"name": value["name"], "arguments": json.dumps(arguments)}}]


def judge(
    prompt: Prompt, status: int, data: Any, one_constrained: bool = False, choice: Any = None
) -> str:
    """``correct``, ``wrong`` (valid call, not the expected one), ``prose`` (honest text where a
    call was expected), ``broken`` (invalid call or call text reaching the client) or
    ``error`` (HTTP error). ``choice``: the tool_choice sent (default: the prompt's); a call of
    another tool breaks only a named choice that was sent."""
    if status != 200 or not isinstance(data, dict) or not data.get("choices"):
        return "error"
    message = data["choices"][0].get("message") or {}
    content = message.get("content") or ""
    calls = message.get("tool_calls") or []
    if one_constrained and not calls:
        calls = calls_from_content(content)
        if not calls:
            return "broken"  # the constrained JSON was cut or malformed
        content = ""
    if not calls:
        if call_text(content, [t["function"]["name"] for t in prompt.tools]):
            return "broken"
        return "correct" if prompt.expect is None else "prose"
    schemas = {t["function"]["name"]: t["function"].get("parameters") for t in prompt.tools}
    sent = prompt.tool_choice if choice is None else choice
    named = sent["function"]["name"] if isinstance(sent, dict) else None
    decoded = []
    for call in calls:
        function = call.get("function") or {}
        name = function.get("name")
        if name not in schemas:
            return "broken"
        try:
            args = json.loads(function.get("arguments") or "{}")
        except ValueError:
            return "broken"
        if not isinstance(args, dict):
            return "broken"
        if schemas[name] and not Draft202012Validator(schemas[name]).is_valid(args):
            return "broken"
        decoded.append((name, args))
    if named and not any(name == named for name, _ in decoded):
        return "broken"
    expect = prompt.expect
    if expect is not None and any(
        name == expect["tool"] and matches(expect.get("args") or {}, args)
        for name, args in decoded
    ):
        return "correct"
    return "wrong"


# --- results -----------------------------------------------------------------------------------


@dataclass
class Result:
    prompt: str
    kind: str
    """``tool`` or ``prose``: which part of the set the prompt belongs to."""
    outcome: str
    seconds: float
    guardrail: str = ""
    answer: Any = None

    @property
    def backend_calls(self) -> int:
        return 1 + sum(note.startswith("retry:") for note in self.guardrail.split(","))


@dataclass
class Summary:
    mode: str
    results: list[Result] = field(default_factory=list)

    def of(self, kind: str) -> list[Result]:
        return [r for r in self.results if r.kind == kind]

    @staticmethod
    def count(results: list[Result], *outcomes: str) -> int:
        return sum(r.outcome in outcomes for r in results)

    def figures(self) -> dict[str, Any]:
        tool, prose = self.of("tool"), self.of("prose")
        seconds = sorted(r.seconds for r in self.results)
        return {
            "tool_prompts": len(tool),
            "correct": self.count(tool, "correct"),
            "prose_prompts": len(prose),
            "prose_kept": self.count(prose, "correct"),
            "usable": self.count(self.results, "correct", "wrong", "prose"),
            "broken": self.count(self.results, "broken"),
            "errors": self.count(self.results, "error"),
            "mean_s": statistics.fmean(seconds) if seconds else 0.0,
            "p90_s": seconds[min(len(seconds) - 1, math.ceil(0.9 * len(seconds)) - 1)]
            if seconds else 0.0,
            "calls_per_answer": statistics.fmean(r.backend_calls for r in self.results)
            if self.results else 0.0,
        }


# --- running -----------------------------------------------------------------------------------


def baseline_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The offered tools as one JSON schema: ``anyOf`` of ``{name: const, arguments}``."""
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["function"]["name"]},
                "arguments": t["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def request_body(prompt: Prompt, mode: Mode, model: str, choice: Any, max_tokens: int) -> dict:
    body: dict[str, Any] = {
        "model": model,
        "messages": prompt.messages,
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    if mode.one_constrained:
        # The same room forge gives its constrained retries: a cut answer says nothing
        # about the strategy.
        body["max_tokens"] = max(max_tokens, CALL_ROOM)
        tools = prompt.tools
        if isinstance(choice, dict):
            tools = [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "tool_call", "schema": baseline_schema(tools)},
        }
    else:
        body["tools"] = prompt.tools
        body["tool_choice"] = choice
    return body


async def ask(
    http: httpx.AsyncClient, url: str, model: str, prompt: Prompt, mode: Mode, choice: Any,
    max_tokens: int,
) -> Result:
    body = request_body(prompt, mode, model, choice, max_tokens)
    started = time.perf_counter()
    try:
        response = await http.post(url + "/v1/chat/completions", json=body)
        status, data = response.status_code, response.json()
        header = response.headers.get("x-forge-guardrail", "")
    except (httpx.HTTPError, ValueError) as exc:
        status, data, header = 0, {"error": str(exc)}, ""
    seconds = time.perf_counter() - started
    answer = data["choices"][0].get("message") if status == 200 and data.get("choices") else data
    kind = "prose" if prompt.expect is None else "tool"
    outcome = judge(prompt, status, data, mode.one_constrained, choice)
    return Result(prompt.id, kind, outcome, seconds, header, answer)


def model_files(model: str) -> tuple[Path, Path | None]:
    """The GGUF and chat template forge's llamafile plugin uses for ``model`` (alias or path)."""
    from forge_llamafile import launch

    alias = launch.MODEL_ALIASES.get(model)
    if alias is not None:
        return alias.path(), launch.bundled_template(alias.template)
    return Path(model), None


@contextlib.asynccontextmanager
async def llama_server(model: str, threads: int | None, flags: str) -> AsyncIterator[str]:
    """A managed llama-server for ``model`` with the template forge would use for it."""
    from forge_llamafile import launch

    port = free_port()
    path, template = model_files(model)
    extra = f"-t {threads} {flags}" if threads else flags
    argv = launch.server_argv(
        launch.find_server_binary(None), path, port, template=template, num_ctx=4096,
        extra_flags=extra,
    )
    process = ManagedProcess(
        "llama-server", argv, f"http://127.0.0.1:{port}/health", load_timeout=180, restart=False
    )
    await process.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await process.stop()


@contextlib.asynccontextmanager
async def forge(backend_url: str, mode: Mode, timeout: float) -> AsyncIterator[str]:
    """``forge serve`` for ``mode`` in front of ``backend_url``; yields forge's URL."""
    assert mode.forge_args is not None
    port = free_port()
    argv = [
        str(Path(sys.executable).with_name("forge")), "serve", "--plugin", "llamafile",
        "--backend-url", backend_url, "--port", str(port),
        "--backend-timeout", str(timeout), "--log-level", "warning", *mode.forge_args,
    ]
    process = ManagedProcess(
        f"forge-{mode.name}", argv, f"http://127.0.0.1:{port}/health", load_timeout=60,
        restart=False,
    )
    await process.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await process.stop()


async def run_mode(
    mode: Mode,
    backend_url: str,
    model: str,
    prompts: list[Prompt],
    args: argparse.Namespace,
    done: list[Summary] | None = None,
) -> Summary:
    """Every prompt through ``mode``; with ``--json`` the file is rewritten after each answer
    (``done``: the modes already finished), so a long run keeps what it measured."""
    summary = Summary(mode.name)
    async with contextlib.AsyncExitStack() as stack:
        url = backend_url
        if mode.forge_args is not None:
            url = await stack.enter_async_context(forge(backend_url, mode, args.timeout))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=args.timeout + 30))
        for prompt in prompts:
            choice = choice_for(prompt, mode)
            if choice is None:
                continue
            result = await ask(http, url, model, prompt, mode, choice, args.max_tokens)
            summary.results.append(result)
            note = f" [{result.guardrail}]" if result.guardrail else ""
            print(f"  {mode.name:<16} {prompt.id:<24} {result.outcome:<8} "
                  f"{result.seconds:6.1f}s{note}", file=sys.stderr, flush=True)
            if args.json:
                write_json(args, model, [*(done or []), summary])
    return summary


async def served_model(backend_url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        data = (await http.get(backend_url + "/v1/models")).json()
    return str(data["data"][0]["id"])


def table(summaries: list[Summary]) -> str:
    head = (f"{'mode':<16} {'correct':>12} {'prose kept':>10} {'usable':>7} {'broken':>7} "
            f"{'errors':>7} {'mean s':>7} {'p90 s':>7} {'calls':>6}")
    lines = [head, "-" * len(head)]
    for s in summaries:
        f = s.figures()
        pct = 100 * f["correct"] / max(1, f["tool_prompts"])
        correct = f"{f['correct']}/{f['tool_prompts']} {pct:3.0f}%"
        prose = f"{f['prose_kept']}/{f['prose_prompts']}" if f["prose_prompts"] else "-"
        lines.append(
            f"{s.mode:<16} {correct:>12} {prose:>10} {f['usable']:>7} {f['broken']:>7} "
            f"{f['errors']:>7} {f['mean_s']:>7.1f} {f['p90_s']:>7.1f} "
            f"{f['calls_per_answer']:>6.2f}"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    if not args.modes:  # a script that swaps MODES (prompt_vs_native.py) runs all of its own
        args.modes = [m for m in DEFAULT_MODES if m in MODES] or list(MODES)
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        print(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}", file=sys.stderr)
        return 2
    prompts = load_prompts(args.prompts, args.tools)
    if args.only:
        prompts = [p for p in prompts if p.id in args.only]
    prompts = prompts[: args.limit or None]
    async with contextlib.AsyncExitStack() as stack:
        backend_url = args.backend_url or await stack.enter_async_context(
            llama_server(args.model, args.threads, args.server_flags)
        )
        model = await served_model(backend_url)
        print(f"{len(prompts)} prompts, model {model} at {backend_url}, "
              f"max_tokens {args.max_tokens}", file=sys.stderr)
        summaries = []
        for name in args.modes:
            summaries.append(
                await run_mode(MODES[name], backend_url, model, prompts, args, summaries)
            )
    print()
    for name in args.modes:
        print(f"{name:<16} {MODES[name].description}")
    print()
    print(table(summaries))
    return 0


def write_json(args: argparse.Namespace, model: str, summaries: list[Summary]) -> None:
    out = {
        "model": model,
        "max_tokens": args.max_tokens,
        "figures": {s.mode: s.figures() for s in summaries},
        "modes": {s.mode: [asdict(r) for r in s.results] for s in summaries},
    }
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend-url", help="a running llama-server (default: launch one)")
    parser.add_argument(
        "--model", default="demo",
        help="model to launch: an alias of the llamafile plugin (demo, gemma3-270m) or a GGUF",
    )
    parser.add_argument(
        "--modes", type=lambda s: [m for m in s.split(",") if m],
        default=None, help=f"comma-separated, from: {', '.join(MODES)} "
        f"(default: {', '.join(DEFAULT_MODES)})",
    )
    parser.add_argument("--prompts", type=Path, default=PROMPTS)
    parser.add_argument("--tools", type=Path, default=TOOLS)
    parser.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    parser.add_argument("--only", type=lambda s: set(s.split(",")), help="only these prompt ids")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per backend call")
    parser.add_argument("--threads", type=int, help="llama-server -t when launching it")
    parser.add_argument("--server-flags", default="", help="extra llama-server flags")
    parser.add_argument("--json", help="write figures, every answer and outcome to this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))

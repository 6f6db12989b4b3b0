"""How often a small model's answer is a valid tool call: directly, and through forge's guardrails.

Runs the fixed prompts of ``bench/prompts/tool_prompts.jsonl`` (tools from
``bench/prompts/tools.json``) against a real llama-server, once per mode, one request at a
time, non-streamed, temperature 0, and prints per mode:

* ``valid``: answers a client can use: a valid call (known tool, JSON-object arguments that
  validate against the tool's schema, the named tool when one is named), or prose where
  ``tool_choice`` is ``auto``;
* ``calls``: answers that are valid calls; ``invalid``: broken calls that reached the client;
  ``missing``: no call where one was required; ``errors``: HTTP errors;
* mean latency per prompt, retries and constrained retries per prompt (from forge's
  ``x-forge-guardrail`` header), rescues.

Validation here is independent of forge's own (``jsonschema`` directly).

Modes are forge command lines (:data:`MODES`), so a new mode is one entry, for example
``Mode("prompt", "...", ["--backend-capability", "prompt"])``; ``--modes`` picks them.

Usage::

    .venv/bin/python bench/guardrail_rate.py                    # launches llama-server + SmolLM2
    .venv/bin/python bench/guardrail_rate.py --backend-url http://127.0.0.1:8080
    .venv/bin/python bench/guardrail_rate.py --modes direct,constrained --limit 5 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from jsonschema import Draft202012Validator

from forge_core.managed import ManagedProcess, free_port

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "prompts" / "tool_prompts.jsonl"
TOOLS = HERE / "prompts" / "tools.json"


@dataclass(frozen=True)
class Mode:
    """One way of sending the prompts: straight to the backend, or through forge."""

    name: str
    description: str
    forge_args: list[str] | None
    """``forge serve`` arguments (besides plugin, backend URL and port); None: no forge."""


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("direct", "llama-server alone", None),
        Mode("native", "forge: validation + rescue, no retries", ["--max-retries", "0"]),
        Mode(
            "retry",
            "forge: + corrective retries (max 3), unconstrained",
            ["--max-retries", "3", "--no-constrained-retry"],
        ),
        Mode("constrained", "forge: + constrained retries (max 3)", ["--max-retries", "3"]),
    )
}


# --- prompts and judging ---------------------------------------------------------------------


@dataclass
class Prompt:
    id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    tool_choice: Any


def load_prompts(path: Path, tools_path: Path) -> list[Prompt]:
    catalog = json.loads(tools_path.read_text())
    prompts = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        raw = json.loads(line)
        messages = [{"role": "system", "content": raw["system"]}] if raw.get("system") else []
        messages.append({"role": "user", "content": raw["prompt"]})
        tools = [
            {"type": "function", "function": {"name": name, **catalog[name]}}
            for name in raw["tools"]
        ]
        choice = raw.get("tool_choice", "auto")
        if isinstance(choice, dict):
            choice = {"type": "function", "function": {"name": choice["name"]}}
        prompts.append(Prompt(raw["id"], messages, tools, choice))
    return prompts


def judge(prompt: Prompt, status: int, data: Any) -> str:
    """``call``, ``prose``, ``invalid``, ``missing`` or ``error``."""
    if status != 200 or not isinstance(data, dict) or not data.get("choices"):
        return "error"
    message = data["choices"][0].get("message") or {}
    calls = message.get("tool_calls") or []
    schemas = {t["function"]["name"]: t["function"].get("parameters") for t in prompt.tools}
    named = (
        prompt.tool_choice["function"]["name"] if isinstance(prompt.tool_choice, dict) else None
    )
    if not calls:
        return "prose" if prompt.tool_choice == "auto" else "missing"
    for call in calls:
        function = call.get("function") or {}
        name = function.get("name")
        if name not in schemas:
            return "invalid"
        try:
            args = json.loads(function.get("arguments") or "{}")
        except ValueError:
            return "invalid"
        if not isinstance(args, dict):
            return "invalid"
        if schemas[name] and not Draft202012Validator(schemas[name]).is_valid(args):
            return "invalid"
    if named and not any((c.get("function") or {}).get("name") == named for c in calls):
        return "invalid"
    return "call"


@dataclass
class Result:
    prompt: str
    outcome: str
    seconds: float
    guardrail: str = ""
    answer: Any = None


@dataclass
class Summary:
    mode: str
    results: list[Result] = field(default_factory=list)

    def count(self, *outcomes: str) -> int:
        return sum(r.outcome in outcomes for r in self.results)

    def notes(self, prefix: str) -> float:
        total = sum(
            sum(note.startswith(prefix) for note in r.guardrail.split(",") if note)
            for r in self.results
        )
        return total / max(1, len(self.results))

    def valid(self) -> int:
        return self.count("call", "prose")


# --- running -----------------------------------------------------------------------------------


async def ask(
    http: httpx.AsyncClient, url: str, model: str, prompt: Prompt, max_tokens: int
) -> Result:
    body = {
        "model": model,
        "messages": prompt.messages,
        "tools": prompt.tools,
        "tool_choice": prompt.tool_choice,
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    started = time.perf_counter()
    try:
        response = await http.post(url + "/v1/chat/completions", json=body)
        status, data = response.status_code, response.json()
        header = response.headers.get("x-forge-guardrail", "")
    except (httpx.HTTPError, ValueError) as exc:
        status, data, header = 0, {"error": str(exc)}, ""
    seconds = time.perf_counter() - started
    answer = data["choices"][0].get("message") if status == 200 and data.get("choices") else data
    return Result(prompt.id, judge(prompt, status, data), seconds, header, answer)


@contextlib.asynccontextmanager
async def llama_server(threads: int | None) -> AsyncIterator[str]:
    """A managed llama-server with the demo model and the hermes tool template."""
    from forge_llamafile import launch

    port = free_port()
    argv = launch.server_argv(
        launch.find_server_binary(None),
        launch.demo_model_path(),
        port,
        template=launch.bundled_template(),
        num_ctx=4096,
        extra_flags=f"-t {threads}" if threads else "",
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
    mode: Mode, backend_url: str, model: str, prompts: list[Prompt], args: argparse.Namespace
) -> Summary:
    summary = Summary(mode.name)
    async with contextlib.AsyncExitStack() as stack:
        url = backend_url
        if mode.forge_args is not None:
            url = await stack.enter_async_context(forge(backend_url, mode, args.timeout))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=args.timeout + 30))
        for prompt in prompts:
            result = await ask(http, url, model, prompt, args.max_tokens)
            summary.results.append(result)
            note = f" [{result.guardrail}]" if result.guardrail else ""
            print(f"  {mode.name:<12} {prompt.id:<20} {result.outcome:<8} "
                  f"{result.seconds:6.1f}s{note}", file=sys.stderr, flush=True)
    return summary


async def served_model(backend_url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        data = (await http.get(backend_url + "/v1/models")).json()
    return str(data["data"][0]["id"])


def table(summaries: list[Summary]) -> str:
    head = (f"{'mode':<12} {'valid':>11} {'calls':>6} {'invalid':>8} {'missing':>8} "
            f"{'errors':>7} {'mean s':>7} {'retries':>8} {'constr.':>8} {'rescued':>8}")
    lines = [head, "-" * len(head)]
    for s in summaries:
        n = max(1, len(s.results))
        mean = statistics.fmean(r.seconds for r in s.results) if s.results else 0.0
        valid = f"{s.valid()}/{len(s.results)} {100 * s.valid() / n:3.0f}%"
        lines.append(
            f"{s.mode:<12} {valid:>11} {s.count('call'):>6} {s.count('invalid'):>8} "
            f"{s.count('missing'):>8} {s.count('error'):>7} {mean:>7.1f} "
            f"{s.notes('retry:'):>8.2f} {s.notes('constrained'):>8.2f} "
            f"{s.notes('rescued'):>8.2f}"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        print(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}", file=sys.stderr)
        return 2
    prompts = load_prompts(args.prompts, args.tools)[: args.limit or None]
    async with contextlib.AsyncExitStack() as stack:
        backend_url = args.backend_url or await stack.enter_async_context(
            llama_server(args.threads)
        )
        model = await served_model(backend_url)
        print(f"{len(prompts)} prompts, model {model} at {backend_url}, "
              f"max_tokens {args.max_tokens}", file=sys.stderr)
        summaries = []
        for name in args.modes:
            summaries.append(await run_mode(MODES[name], backend_url, model, prompts, args))
    print()
    for name in args.modes:
        print(f"{name:<12} {MODES[name].description}")
    print()
    print(table(summaries))
    if args.json:
        out = {"model": model, "max_tokens": args.max_tokens,
               "modes": {s.mode: [asdict(r) for r in s.results] for s in summaries}}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend-url", help="a running llama-server (default: launch one)")
    parser.add_argument(
        "--modes", type=lambda s: [m for m in s.split(",") if m],
        default=list(MODES), help=f"comma-separated, from: {', '.join(MODES)}",
    )
    parser.add_argument("--prompts", type=Path, default=PROMPTS)
    parser.add_argument("--tools", type=Path, default=TOOLS)
    parser.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per backend call")
    parser.add_argument("--threads", type=int, help="llama-server -t when launching it")
    parser.add_argument("--json", help="write every answer and outcome to this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))

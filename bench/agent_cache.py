"""How much of a real agent's prompt the backend re-reads on the next turn, through forge.

Runs a two-turn Claude Code session (``claude -p``, then ``claude -p --continue``) and a
two-turn opencode session (``opencode run``, then ``opencode run --continue``) through
``forge serve --plugin llamafile`` managing a llama-server with the demo model, and reads from
llama-server itself (``/metrics``: ``llamacpp:prompt_tokens_total``, the prompt tokens it
actually processed, cached ones excluded) how many prompt tokens each turn cost, with the turn's
wall time. A turn may make several requests (Claude Code and opencode ask for a title too);
the figures are per turn, and ``requests`` counts them.

    python bench/agent_cache.py                       # both agents, JSON to stdout
    python bench/agent_cache.py --agents claude --num-ctx 16384 --out figures.json

Needs ``claude`` (scripts/install-claude-code.sh) and ``opencode`` (scripts/install-opencode.sh)
on PATH and the full environment (llama-server + demo model). On a 2-core CPU a cold turn of
a 5-10K-token prompt takes minutes: the script is meant to run in the background.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

MODEL = "smollm2-135m-instruct"
TURNS = (
    "List the files in this directory with the Bash tool.",
    "Now show the first line of notes.txt.",
)
_METRIC = re.compile(r"^llamacpp:(prompt_tokens_total|prompt_tokens_cached_total|"
                     r"tokens_predicted_total)\s+([0-9.e+]+)$", re.MULTILINE)


def free_port() -> int:
    from forge_core.managed import free_port as pick

    return pick()


def start_forge(port: int, num_ctx: int, log: Path) -> subprocess.Popen[bytes]:
    """forge managing llama-server; ``--metrics`` makes llama-server count processed tokens."""
    argv = [
        str(Path(sys.executable).with_name("forge")), "serve", "--plugin", "llamafile",
        "--model", "demo", "--num-ctx", str(num_ctx), "--port", str(port), "--any-model",
        "--backend-timeout", "1800", "--stream-start-grace", "5", "--extra-flags=--metrics",
    ]
    env = dict(os.environ)
    # Some virtual CPUs announce AMX without enabling it: llama.cpp's repacked weights then
    # crash; plain weights work everywhere (and the bench measures caching, not speed).
    env.setdefault("LLAMA_ARG_REPACK", "0")
    handle = log.open("wb")
    return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"forge exited with {proc.returncode} before it was ready")
        try:
            response = httpx.get(url + "/ready", timeout=5)
            if response.status_code == 200:
                return response.json()  # type: ignore[no-any-return]
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("forge was not ready in time")


def counters(llama_url: str) -> dict[str, float]:
    text = httpx.get(llama_url + "/metrics", timeout=10).text
    return {name: float(value) for name, value in _METRIC.findall(text)}


def claude_turn(url: str, work: Path, home: Path, prompt: str, turn: int, tools: str,
                max_output: int) -> tuple[list[str], dict[str, str]]:
    env = {
        "PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "dummy", "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(max_output), "API_TIMEOUT_MS": "1800000",
    }
    argv = ["claude", "-p", prompt, "--tools", tools, "--allowedTools", tools,
            "--max-turns", "2"]
    return [*argv, *(["--continue"] if turn else [])], env


def opencode_turn(url: str, work: Path, home: Path, prompt: str, turn: int, tools: str,
                  max_output: int) -> tuple[list[str], dict[str, str]]:
    keep = set(tools.lower().split(","))
    all_tools = ["bash", "edit", "glob", "grep", "read", "skill", "task", "todowrite",
                 "webfetch", "write"]
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {"forge": {
            "npm": "@ai-sdk/openai-compatible", "name": "forge",
            "options": {"baseURL": url + "/v1", "apiKey": "dummy", "timeout": 1800000},
            "models": {MODEL: {"name": "SmolLM2 via forge", "tool_call": True,
                               "limit": {"context": 16384, "output": max_output}}},
        }},
        "model": f"forge/{MODEL}", "small_model": f"forge/{MODEL}",
        "tools": {name: name in keep for name in all_tools},
        "share": "disabled", "autoupdate": False,
    }
    (work / "opencode.json").write_text(json.dumps(config, indent=2))
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PWD": str(work),
           "OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_MODELS_FETCH": "1"}
    argv = ["opencode", "run", prompt, "-m", f"forge/{MODEL}"]
    return [*argv, *(["--continue"] if turn else [])], env


AGENTS = {"claude": (claude_turn, "Bash,Read"), "opencode": (opencode_turn, "bash,read")}


def run_agent(name: str, url: str, llama_url: str, args: argparse.Namespace) -> dict[str, Any]:
    build, default_tools = AGENTS[name]
    tools = getattr(args, f"{name}_tools") or default_tools
    root = Path(tempfile.mkdtemp(prefix=f"forge-bench-{name}-"))
    work, home = root / "work", root / "home"
    work.mkdir()
    home.mkdir()
    (work / "notes.txt").write_text("forge bench notes\nsecond line\n")
    turns = []
    for turn, prompt in enumerate(TURNS):
        argv, env = build(url, work, home, prompt, turn, tools, args.max_output)
        before = counters(llama_url)
        started = time.monotonic()
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                              timeout=args.turn_timeout, check=False)
        wall = time.monotonic() - started
        after = counters(llama_url)
        turns.append({
            "turn": turn + 1,
            "prompt_tokens_processed": int(after["prompt_tokens_total"]
                                           - before["prompt_tokens_total"]),
            # Recent llama-server also counts the prompt tokens it took from the cache.
            "prompt_tokens_cached": int(after.get("prompt_tokens_cached_total", 0)
                                        - before.get("prompt_tokens_cached_total", 0)),
            "tokens_generated": int(after["tokens_predicted_total"]
                                    - before["tokens_predicted_total"]),
            "wall_s": round(wall, 1),
            "exit": done.returncode,
            "output": done.stdout.strip()[-300:],
            "stderr": done.stderr.strip()[-300:],
        })
        print(f"{name} turn {turn + 1}: {turns[-1]}", file=sys.stderr, flush=True)
    first, second = turns[0]["prompt_tokens_processed"], turns[1]["prompt_tokens_processed"]
    shutil.rmtree(root, ignore_errors=True)
    return {"agent": name, "tools": tools, "turns": turns,
            "turn2_vs_turn1": round(second / first, 4) if first else None}


def forge_requests(log: Path) -> list[str]:
    """forge's request log lines (protocol, tools, notes such as max-tokens-clamped)."""
    return [line.split("forge.http: ", 1)[1] for line in log.read_text().splitlines()
            if "forge.http: " in line and " model=" in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="claude,opencode")
    parser.add_argument("--num-ctx", type=int, default=16384)
    parser.add_argument("--claude-tools", default="")
    parser.add_argument("--opencode-tools", default="")
    parser.add_argument("--max-output", type=int, default=32,
                        help="max output tokens the agents ask for (keeps turns short)")
    parser.add_argument("--turn-timeout", type=float, default=1500)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkstemp(prefix="forge-bench-", suffix=".log")[1])
    forge = start_forge(port, args.num_ctx, log)
    try:
        ready = wait_ready(url, forge)
        llama_url = ready["backend_url"]
        results = {
            "num_ctx": ready.get("context_budget"),
            "model": MODEL,
            "agents": [run_agent(a, url, llama_url, args) for a in args.agents.split(",")],
            "forge_requests": None,
        }
    finally:
        os.killpg(forge.pid, signal.SIGTERM)
        forge.wait(timeout=60)
    results["forge_requests"] = forge_requests(log)
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""The demo: forge + a managed llama-server + SmolLM2-135M answering a tool-calling request.

Starts ``forge serve --plugin llamafile --model demo``, sends one OpenAI chat request with a
tool (non-streamed, then streamed), prints what came back and what forge's guardrails did,
then stops forge (which stops llama-server).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from forge_core.managed import free_port

ROOT = Path(__file__).resolve().parents[1]
FORGE = ROOT / ".venv" / "bin" / "forge"

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Paris"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
]


def start_forge(port: int) -> tuple[subprocess.Popen[str], str]:
    binary = str(FORGE) if FORGE.exists() else "forge"
    cmd = [binary, "serve", "--plugin", "llamafile", "--model", "demo", "--port", str(port)]
    print("$ " + " ".join(cmd[1:] if binary == "forge" else ["forge", *cmd[1:]]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Proxy ready" in line:
            print(line.rstrip())
            return proc, f"http://127.0.0.1:{port}"
        if "error" in line.lower():
            print(line.rstrip())
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("forge did not become ready; see the output above")


def show_call(message: dict) -> None:
    for call in message.get("tool_calls") or []:
        fn = call["function"]
        args = json.loads(fn["arguments"])
        print(f"  tool call  {fn['name']}({json.dumps(args)})   id={call['id']}")
    if message.get("content"):
        print(f"  text       {message['content']!r}")


def main() -> int:
    port = free_port()
    proc, url = start_forge(port)
    try:
        question = "What's the weather in Paris right now?"
        body = {
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": question}],
            "tools": TOOLS,
            "tool_choice": "required",
            "max_tokens": 128,
            "temperature": 0,
        }
        print(f"\nuser: {question}   (tools: get_weather, tool_choice=required)")
        with httpx.Client(base_url=url, timeout=300) as http:
            started = time.monotonic()
            response = http.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            data = response.json()
            print(f"\nnon-streamed answer in {time.monotonic() - started:.1f}s "
                  f"(finish_reason={data['choices'][0]['finish_reason']}, "
                  f"guardrails: {response.headers.get('x-forge-guardrail', 'none needed')})")
            show_call(data["choices"][0]["message"])

            started = time.monotonic()
            calls: dict[int, dict] = {}
            finish = None
            with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choice = json.loads(line[6:])["choices"][0]
                    finish = choice["finish_reason"] or finish
                    for delta in choice["delta"].get("tool_calls") or []:
                        slot = calls.setdefault(delta["index"], {"arguments": ""})
                        slot.update({k: delta[k] for k in ("id",) if k in delta})
                        fn = delta.get("function") or {}
                        slot.setdefault("name", fn.get("name"))
                        slot["arguments"] += fn.get("arguments") or ""
            elapsed = time.monotonic() - started
            print(f"\nstreamed answer in {elapsed:.1f}s (finish_reason={finish})")
            show_call({"tool_calls": [
                {"id": c.get("id"), "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls.values()
            ]})
        ok = bool(data["choices"][0]["message"].get("tool_calls")) and bool(calls)
        print("\ndemo " + ("succeeded: forge returned valid tool calls" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

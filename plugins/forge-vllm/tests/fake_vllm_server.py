"""A stand-in for ``python -m vllm.entrypoints.openai.api_server`` in managed-mode tests.

Accepts vLLM's command line, records it (and the pid of a child it spawns, to check that the
whole process group is stopped) in the JSON file named by FAKE_VLLM_RECORD, and answers
``/v1/models`` and the tool probe with recorded vLLM bodies: the probe gets a 200 when the
tool flags were given and vLLM's 400 otherwise. FAKE_VLLM_FAIL makes it exit at start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "vllm"


def main() -> None:
    argv = sys.argv[1:]
    if os.environ.get("FAKE_VLLM_FAIL"):
        print(os.environ["FAKE_VLLM_FAIL"], file=sys.stderr, flush=True)
        sys.exit(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("-m")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--served-model-name")
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--enable-auto-tool-choice", action="store_true")
    parser.add_argument("--tool-call-parser")
    args, _ = parser.parse_known_args(argv)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    record = {"argv": argv, "pid": os.getpid(), "child_pid": child.pid}
    Path(os.environ["FAKE_VLLM_RECORD"]).write_text(json.dumps(record))
    served = args.served_model_name or args.model
    tools_on = args.enable_auto_tool_choice and bool(args.tool_call_parser)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            card = {"id": served, "object": "model", "max_model_len": args.max_model_len}
            self._send(200, json.dumps({"object": "list", "data": [card]}).encode())

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            name = "probe_ok" if tools_on else "noflags_probe"
            status = 200 if tools_on else 400
            self._send(status, (FIXTURES / f"{name}.body").read_bytes())

        def log_message(self, *_: object) -> None:
            pass

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()

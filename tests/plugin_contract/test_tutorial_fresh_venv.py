"""docs/writing-a-plugin.md works as written: its own code blocks are written out, installed
with the core in a fresh virtual environment next to a deliberately broken plugin, and the
page's commands are run: ``forge plugins``, the tutorial's tests, ``pytest --forge-conformance
tinyllm``, and ``forge serve`` answering through both plugins (and with one disabled)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from forge_core.managed import free_port
from forge_core.testing import WEATHER_TOOL, ScriptedBackend, reply_text, serve_on_loopback

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "writing-a-plugin.md"
BLOCK = re.compile(r"^```\w+ file=(\S+)\n(.*?)^```$", re.S | re.M)

BROKEN_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "forge-proxy-broken"
version = "0.1.0"
dependencies = ["forge-proxy-core"]

[project.entry-points."forge.plugins"]
broken = "forge_broken"
wontimport = "forge_broken_import"

[tool.setuptools]
py-modules = ["forge_broken", "forge_broken_import"]
"""

BROKEN_MODULE = '''
"""A plugin whose parser and transform raise on every request."""
from forge_core.guardrails.records import RescueParser
from forge_core.hookspecs import hookimpl
from forge_core.transforms import RequestTransform


def parse(text, tool_names):
    raise KeyError("parser bug")


def apply(body, request):
    raise RuntimeError("transform bug")


@hookimpl
def forge_register_rescue_parsers(register):
    register(RescueParser(name="broken-parser", parse=parse, markers=("<func",), order=5))


@hookimpl
def forge_register_request_transforms(register):
    register(RequestTransform(name="broken-transform", apply=apply))
'''


def write_tutorial(root: Path) -> list[str]:
    written = []
    for path, body in BLOCK.findall(TUTORIAL.read_text()):
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
        written.append(path)
    return written


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("tutorial")
    written = write_tutorial(work)
    assert "forge-proxy-tinyllm/forge_tinyllm/plugin.py" in written
    assert "forge-proxy-functag/forge_functag/plugin.py" in written
    broken = work / "forge-proxy-broken"
    broken.mkdir()
    (broken / "pyproject.toml").write_text(BROKEN_PYPROJECT)
    (broken / "forge_broken.py").write_text(BROKEN_MODULE)
    (broken / "forge_broken_import.py").write_text("raise ImportError('broken on purpose')\n")
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", str(ROOT), str(work / "forge-proxy-tinyllm"),
         str(work / "forge-proxy-functag"), str(broken), "pytest"],
        check=True, timeout=900,
    )
    return env_dir / "bin", work


def test_forge_plugins_lists_the_tutorial_plugins_and_the_broken_ones(
    venv: tuple[Path, Path],
) -> None:
    bin_dir, work = venv
    listed = subprocess.run([str(bin_dir / "forge"), "plugins", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    out = json.loads(listed.stdout)
    assert [p["name"] for p in out["plugins"]] == ["tinyllm"]
    hooks = {row["name"]: row for row in out["hooks"]}
    assert hooks["functag"]["kind"] == "extension"
    assert hooks["functag"]["registered"] == [
        {"hook": "forge_register_rescue_parsers", "name": "func-tag", "order": 60}]
    assert hooks["wontimport"]["status"] == "failed"
    assert "broken on purpose" in hooks["wontimport"]["error"]
    parsers = [p["name"] for p in out["rescue_parsers"]]
    assert parsers.index("broken-parser") < parsers.index("func-tag") < parsers.index("json")


def test_the_tutorials_own_tests_and_the_conformance_kit_pass(venv: tuple[Path, Path]) -> None:
    bin_dir, work = venv
    for args in (["forge-proxy-functag/tests"], ["--forge-conformance", "tinyllm"]):
        result = subprocess.run([str(bin_dir / "pytest"), "-q", "-p", "no:cacheprovider",
                                 *args], cwd=work, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert "passed" in result.stdout


@pytest.fixture(scope="module")
def tinyllm_server() -> Iterator[tuple[ScriptedBackend, str]]:
    backend = ScriptedBackend(models=["org/tiny-model"])
    with serve_on_loopback(backend.app) as url:
        yield backend, url


@pytest.mark.parametrize("disabled", [False, True])
def test_forge_serve_rescues_through_the_parser_plugin_despite_the_broken_one(
    venv: tuple[Path, Path], tinyllm_server: tuple[ScriptedBackend, str], disabled: bool,
) -> None:
    bin_dir, _ = venv
    backend, url = tinyllm_server
    port = free_port()
    argv = [str(bin_dir / "forge"), "serve", "--plugin", "tinyllm", "--backend-url", url,
            "--port", str(port)]
    if disabled:
        argv += ["--disable-plugin", "broken"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    before: list[str] = []
    try:
        assert proc.stdout is not None
        deadline, ready = time.monotonic() + 60, ""
        while time.monotonic() < deadline and not ready:
            line = proc.stdout.readline()
            if not line:
                break
            before.append(line)
            ready = line if "Proxy ready" in line else ""
        assert "plugin=tinyllm" in ready and "org/tiny-model" in ready, ready
        backend.push(reply_text('<func name="get_weather">{"city": "Paris"}</func>'))
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
            json={"model": "tiny-model", "tools": [WEATHER_TOOL],
                  "messages": [{"role": "user", "content": "weather in Paris?"}]},
        )
        assert response.status_code == 200, response.text
        call = response.json()["choices"][0]["message"]["tool_calls"][0]["function"]
        assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {
            "city": "Paris"}
        assert backend.requests[-1]["model"] == "org/tiny-model"  # the identity rule
        notes = response.headers["x-forge-guardrail"].split(",")
        assert "rescued:func-tag" in notes
        broken_notes = {"rescue-failed:broken-parser", "transform-failed:broken-transform"}
        assert broken_notes.isdisjoint(notes) if disabled else broken_notes <= set(notes)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = "".join(before) + proc.communicate(timeout=30)[0]
    if not disabled:
        assert "KeyError" in output and "Traceback" in output  # the log has the traceback
        assert "broken on purpose" in output  # the import failure was reported at start-up

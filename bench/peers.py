"""The peers forge is measured against, each in its own virtual environment.

* ``upstream``: upstream forge, PyPI ``forge-guardrails`` 0.10.0 (needs Python 3.12+), run as
  ``python -m forge.proxy --backend-url ...`` (its own raw asyncio HTTP server);
* ``litellm``: LiteLLM's proxy (PyPI ``litellm[proxy]``), one ``openai/`` model pointed at the
  fake backend.

Nothing is installed unless asked (``--install-peers``): the venvs live in ``/work`` by
default (``--peers-dir``), and a missing peer is skipped with a note.
"""

from __future__ import annotations

import glob
import os
import subprocess
import tempfile
from dataclasses import dataclass

from benchlib import MODEL

UPSTREAM_PIN = "forge-guardrails==0.10.0"
LITELLM_PIN = "litellm[proxy]"


@dataclass(frozen=True)
class Peer:
    name: str
    venv: str
    requirement: str
    health: str

    @property
    def python(self) -> str:
        return os.path.join(self.venv, "bin", "python")

    def installed(self) -> bool:
        return os.path.exists(self.python)


def peers(root: str) -> dict[str, Peer]:
    return {
        "upstream": Peer("upstream", os.path.join(root, "venv-upstream"), UPSTREAM_PIN, "/health"),
        "litellm": Peer(
            "litellm", os.path.join(root, "venv-litellm"), LITELLM_PIN, "/health/liveliness"
        ),
    }


def python312() -> str:
    """A Python 3.12+ for the peers' venvs (upstream forge requires it)."""
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python")))
    for candidate in (*found, "/usr/bin/python3.12", "/usr/bin/python3.13"):
        if os.path.exists(candidate):
            return candidate
    raise RuntimeError("the peers need Python 3.12 or newer; none found")


def install(peer: Peer) -> None:
    """Create ``peer``'s venv and install its pinned distribution (only when asked)."""
    if not peer.installed():
        subprocess.run([python312(), "-m", "venv", peer.venv], check=True)
    done = subprocess.run(
        [peer.python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         peer.requirement], stderr=subprocess.PIPE, text=True,
    )
    # pip warns once per package about find-links folders a machine's pip.conf names but
    # lacks: noise, dropped like scripts/setup.sh drops it.
    for line in done.stderr.splitlines():
        if not line.startswith("WARNING: Location 'file://"):
            print(line)
    done.check_returncode()


def argv(peer: Peer, backend_port: int, port: int) -> list[str]:
    """The command that serves ``peer`` on ``port`` in front of the fake backend."""
    backend = f"http://127.0.0.1:{backend_port}"
    if peer.name == "upstream":
        return [
            peer.python, "-m", "forge.proxy", "--backend-url", backend, "--backend", "openai",
            "--model", MODEL, "--host", "127.0.0.1", "--port", str(port), "--no-serialize",
        ]
    fd, config = tempfile.mkstemp(prefix="bench-litellm-", suffix=".yaml")
    with os.fdopen(fd, "w") as out:
        out.write(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: {backend}/v1\n"
            "      api_key: not-needed\n"
            "general_settings:\n"  # loopback only, no key: the bench sends none
            "  dangerously_permit_weak_or_unset_master_key: true\n"
            "litellm_settings:\n"
            "  drop_params: true\n"
            "  set_verbose: false\n"
        )
    litellm = os.path.join(peer.venv, "bin", "litellm")
    return [litellm, "--config", config, "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]

"""The pytest side of the conformance kit: ``pytest --forge-conformance NAME``.

Registered through forge-proxy-core's ``pytest11`` entry point, so it is active wherever
forge is installed; it only adds the option, and does nothing unless the option is given.
With it, the suite (:mod:`forge_core.conformance.suite`) is collected: alone when no paths are
given on the command line, else next to them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SUITE = Path(__file__).with_name("suite.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("forge", "forge plugin conformance")
    group.addoption(
        "--forge-conformance",
        dest="forge_conformance",
        metavar="NAME",
        default=None,
        help="Run forge's conformance suite against the installed backend plugin NAME.",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("forge_conformance"):
        return
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args.append(str(SUITE))
    else:  # no paths given: only the suite, not the project's own tests
        config.args[:] = [str(SUITE)]

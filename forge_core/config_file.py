"""``forge serve --config forge.toml``: every serve option from a TOML file.

Keys are the long option names with ``_`` for ``-`` (``backend_url``, ``max_retries``, a
plugin's own ``num_ctx``...); a flag such as ``--no-rescue`` is ``no_rescue = true``, a pair such
as ``--serialize/--no-serialize`` is ``serialize = true|false``. Precedence, highest first:
command-line flags, ``FORGE_*`` environment variables, the file, the built-in defaults (the
file becomes click's ``default_map``). Unknown keys and bad values are refused at start with
the key's name.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

ENV_PREFIX = "FORGE"
"""``--backend-url`` is also ``FORGE_BACKEND_URL``; ``--config`` is ``FORGE_CONFIG``."""
NOT_IN_FILE = frozenset({"config", "help"})


class ConfigFileError(Exception):
    """The file is unreadable, not TOML, or has an unknown key or a bad value."""


def read(path: str | Path) -> dict[str, Any]:
    """The file's table of options (a ``[serve]`` table, if present, holds them)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config file {path} is not valid TOML: {exc}") from None
    if isinstance(data.get("serve"), dict):
        extra = sorted(k for k in data if k != "serve")
        if extra:
            raise ConfigFileError(
                f"config file {path}: unknown key '{extra[0]}' next to the [serve] table"
            )
        data = data["serve"]
    return data


def check(
    path: str | Path, values: dict[str, Any], params: Sequence[click.Parameter],
    ctx: click.Context,
) -> dict[str, Any]:
    """Validate every key and value against the command's options; return click defaults.

    A value is converted and checked exactly as the same flag would be, callbacks included.
    """
    by_name = {p.name: p for p in params if p.name and p.name not in NOT_IN_FILE}
    out: dict[str, Any] = {}
    for key, value in values.items():
        param = by_name.get(key) or by_name.get(key.replace("-", "_"))
        if param is None:
            close = difflib.get_close_matches(key.replace("-", "_"), list(by_name), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigFileError(f"config file {path}: unknown key '{key}'{hint}")
        if isinstance(value, dict):
            raise ConfigFileError(f"config file {path}: key '{key}' must be a value, not a table")
        try:
            param.process_value(ctx, value)
        except click.BadParameter as exc:
            raise ConfigFileError(f"config file {path}: key '{key}': {exc.message}") from None
        except click.UsageError as exc:
            raise ConfigFileError(f"config file {path}: key '{key}': {exc.message}") from None
        out[param.name] = value  # type: ignore[index]
    return out


def envvar_for(param: click.Parameter) -> str:
    return f"{ENV_PREFIX}_{(param.name or '').upper()}"

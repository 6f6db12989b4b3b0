"""Context budgets: the GGUF header reader, the forge-full / forge-fast rule, the budget mode
rules of the command line, and the 400 for a prompt that plainly does not fit."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from forge_core import budget, cli, tokens
from forge_core.backend import BackendSpec
from forge_core.budget import (
    ContextBudget,
    ModelShape,
    check_prompt,
    choose_context,
    mem_available,
    model_shape,
    read_gguf_metadata,
)
from forge_core.errors import ContextExceeded, PluginError
from forge_core.testing import ScriptedBackend, chat, fake_spec, forge_client, reply_text

# --- a synthetic GGUF header --------------------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, kind: int, payload: bytes) -> bytes:
    return _string(key) + struct.pack("<I", kind) + payload


def write_gguf(path: Path, kv_heads: int | list[int] = 8, context: int = 32768) -> Path:
    """A GGUF v3 file with only metadata: a llama-shaped model, a vocabulary-sized string
    array and a large float array (both must be skipped, not decoded)."""
    u32 = lambda v: struct.pack("<I", v)  # noqa: E731
    entries = [
        _kv("general.architecture", 8, _string("llama")),
        _kv("general.name", 8, _string("synthetic")),
        _kv("tokenizer.ggml.tokens", 9,
            struct.pack("<IQ", 8, 5000) + b"".join(_string(f"tok{i}") for i in range(5000))),
        _kv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 5000) + b"\0" * 4 * 5000),
        _kv("llama.context_length", 4, u32(context)),
        _kv("llama.block_count", 4, u32(32)),
        _kv("llama.embedding_length", 4, u32(4096)),
        _kv("llama.attention.head_count", 4, u32(32)),
        _kv("general.flag", 7, b"\x01"),
    ]
    if isinstance(kv_heads, list):
        entries.append(_kv("llama.attention.head_count_kv", 9,
                           struct.pack("<IQ", 4, len(kv_heads))
                           + b"".join(u32(h) for h in kv_heads)))
    else:
        entries.append(_kv("llama.attention.head_count_kv", 4, u32(kv_heads)))
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries))
    path.write_bytes(header + b"".join(entries))
    return path


def test_gguf_header_is_read_and_large_arrays_skipped(tmp_path: Path) -> None:
    meta = read_gguf_metadata(write_gguf(tmp_path / "m.gguf"))
    assert meta["general.architecture"] == "llama"
    assert meta["llama.context_length"] == 32768
    assert meta["general.flag"] is True
    assert meta["tokenizer.ggml.tokens"] is None  # skipped, not decoded
    shape = model_shape(meta)
    # Llama-3-8B-like: 32 layers x 8 KV heads x (128 + 128) x 2 bytes = 128 KiB per token.
    assert shape == ModelShape("llama", 32768, 32, (8,) * 32, 128, 128)
    assert shape.kv_bytes_per_token() == 131072


def test_per_layer_kv_heads_are_summed(tmp_path: Path) -> None:
    heads = [8] * 16 + [0] * 16  # e.g. layers without their own KV cache
    shape = model_shape(read_gguf_metadata(write_gguf(tmp_path / "m.gguf", kv_heads=heads)))
    assert shape.kv_bytes_per_token() == 16 * 8 * 256 * 2


def test_not_a_gguf_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(PluginError, match="cannot size the context.*not a GGUF file"):
        budget.read_model_shape(bad)
    truncated = tmp_path / "short.gguf"
    truncated.write_bytes(write_gguf(tmp_path / "m.gguf").read_bytes()[:200])
    with pytest.raises(PluginError, match="truncated"):
        budget.read_model_shape(truncated)


def test_demo_model_shape() -> None:
    """The real SmolLM2-135M header: 30 layers, 3 KV heads of 64 dims, native 8192."""
    launch = pytest.importorskip("forge_llamafile.launch")
    try:
        path = launch.demo_model_path()
    except PluginError as exc:
        pytest.skip(exc.message)
    shape = budget.read_model_shape(path)
    assert shape.context_length == 8192
    assert shape.kv_bytes_per_token() == 30 * 3 * 128 * 2


def test_mem_available_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 2000 kB\nMemFree: 100 kB\nMemAvailable: 1500 kB\n")
    assert mem_available(meminfo) == 1500 * 1024
    meminfo.write_text("MemTotal: 2000 kB\n")
    assert mem_available(meminfo) is None


# --- the rule -----------------------------------------------------------------------------------

GIB = 1024**3
SHAPE = ModelShape("llama", 32768, 32, (8,) * 32, 128, 128)  # 128 KiB per token


def test_full_is_native_when_memory_is_plentiful() -> None:
    choice = choose_context("forge-full", SHAPE, available=64 * GIB, model_bytes=5 * GIB)
    assert choice.tokens == 32768
    assert "native 32768" in choice.explanation


def test_full_is_limited_by_free_memory() -> None:
    # 8 GiB free - 4 GiB model - 819 MiB reserve (10%) = 3277 MiB -> 26214 tokens -> 26112.
    choice = choose_context("forge-full", SHAPE, available=8 * GIB, model_bytes=4 * GIB)
    assert choice.tokens == 26112
    assert choice.tokens % 256 == 0
    fast = choose_context("forge-fast", SHAPE, available=8 * GIB, model_bytes=4 * GIB)
    assert (fast.tokens, fast.full) == (6400, 26112)  # 26112 / 4 = 6528, rounded down to 256


def test_fast_is_a_quarter_of_full_but_at_least_4096() -> None:
    big = ModelShape("llama", 131072, 32, (8,) * 32, 128, 128)
    assert choose_context("forge-fast", big, 256 * GIB, GIB).tokens == 32768
    assert choose_context("forge-fast", SHAPE, 64 * GIB, GIB).tokens == 8192
    small = ModelShape("llama", 8192, 30, (3,) * 30, 64, 64)
    assert choose_context("forge-fast", small, 64 * GIB, GIB).tokens == 4096
    tiny = ModelShape("llama", 2048, 30, (3,) * 30, 64, 64)
    assert choose_context("forge-fast", tiny, 64 * GIB, GIB).tokens == 2048


def test_too_little_memory_refuses_to_start() -> None:
    with pytest.raises(PluginError, match="not enough free memory"):
        choose_context("forge-full", SHAPE, available=int(4.6 * GIB), model_bytes=4 * GIB)


# --- command line -------------------------------------------------------------------------------


def _spec(modes: tuple[str, ...], num_ctx_option: bool) -> BackendSpec:
    import click

    spec = fake_spec("b")
    spec.budget_modes = modes
    spec.cli_options = [click.Option(["--num-ctx", "num_ctx"], type=int)] if num_ctx_option \
        else []
    return spec


@pytest.mark.parametrize(
    ("requested", "num_ctx", "expected"),
    [(None, None, "backend"), (None, 4096, "manual"), ("manual", 4096, "manual"),
     ("forge-fast", None, "forge-fast"), ("backend", None, "backend")],
)
def test_budget_mode_resolution(requested: str | None, num_ctx: int | None, expected: str) -> None:
    spec = _spec(budget.BUDGET_MODES, num_ctx_option=True)
    assert cli.resolve_budget_mode(spec, requested, num_ctx) == expected


@pytest.mark.parametrize(
    ("modes", "option", "requested", "num_ctx", "message"),
    [
        (budget.BUDGET_MODES, True, "manual", None, "manual needs --num-ctx N"),
        (budget.BUDGET_MODES, True, "forge-full", 4096, "use it with --budget-mode manual"),
        (("backend", "manual"), True, "forge-full", None, "does not support --budget-mode"),
        (("backend", "manual"), False, None, 4096, "'b' lacks"),
    ],
)
def test_budget_mode_mistakes_are_one_clear_sentence(
    modes: tuple[str, ...], option: bool, requested: str | None, num_ctx: int | None, message: str
) -> None:
    with pytest.raises(PluginError, match=message):
        cli.resolve_budget_mode(_spec(modes, option), requested, num_ctx)


def test_budget_mode_reaches_the_backend_settings() -> None:
    spec = _spec(budget.BUDGET_MODES, num_ctx_option=True)
    opts: dict[str, Any] = {
        "backend_capability": "native", "backend_url": "http://x", "model": None,
        "backend_timeout": 300.0, "serialize": None, "api_key_env": "FORGE_TEST_KEY_UNSET",
        "host": "127.0.0.1", "port": 1, "max_body_bytes": 10, "max_retries": 3,
        "no_rescue": False, "inject_respond_tool": False, "keepalive_interval": 5.0,
        "max_queue": 4, "any_model": False, "budget_mode": None,
    }
    config = cli.build_config(spec, opts, {"num_ctx": 2048})
    assert config.backend.budget_mode == "manual"
    assert config.backend.options["num_ctx"] == 2048


# --- the prompt check ---------------------------------------------------------------------------


def _body(chars: int) -> dict[str, Any]:
    return chat("x" * chars)


async def test_small_prompts_skip_the_exact_count() -> None:
    calls: list[Any] = []

    async def count(body: dict[str, Any]) -> int:
        calls.append(body)
        return 10**6

    assert await check_prompt(_body(1000), 4096, count) is None  # ~250 tokens: obviously fine
    assert calls == []


async def test_exact_count_decides_near_the_budget() -> None:
    async def count(body: dict[str, Any]) -> int:
        return 5000

    with pytest.raises(ContextExceeded) as info:
        await check_prompt(_body(9000), 4096, count)
    assert "5000 tokens" in info.value.message and "4096 tokens" in info.value.message
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"

    async def fits(body: dict[str, Any]) -> int:
        return 3000

    assert await check_prompt(_body(9000), 4096, fits) == 3000


async def test_without_exact_count_only_plain_excess_is_rejected() -> None:
    async def unknown(body: dict[str, Any]) -> None:
        return None

    # 20000 chars: ~5000 tokens at 4 chars/token, but only ~3333 at 6: not plainly over 4096
    # (each figure plus the one message's template overhead, 4).
    assert await check_prompt(_body(20000), 4096, unknown) == 5004
    with pytest.raises(ContextExceeded, match="about 7504 tokens .* 4096"):
        await check_prompt(_body(30000), 4096, unknown)


async def test_no_budget_means_no_check() -> None:
    assert await check_prompt(_body(10**6), None, None) is None


def test_estimate_counts_tools_and_tool_calls() -> None:
    body = chat("hi")
    body["tools"] = [{"type": "function", "function": {"name": "f" * 400}}]
    body["messages"].append({"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}" + " " * 400}}
    ]})
    assert tokens.measure(body).text_bytes > 800


@pytest.mark.parametrize("stream", [False, True])
async def test_app_answers_400_naming_both_numbers(stream: bool) -> None:
    backend = ScriptedBackend()
    backend.push(reply_text("never sent"))
    async with forge_client(backend) as http:
        http.forge_state.budget = ContextBudget("manual", 1024)  # type: ignore[attr-defined]
        response = await http.post(
            "/v1/chat/completions", json=chat("word " * 2000, stream=stream)
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert "2504 tokens" in error["message"] and "1024 tokens" in error["message"]
        anthropic = await http.post("/v1/messages", json={
            "model": "fake-model", "max_tokens": 10, "stream": stream,
            "messages": [{"role": "user", "content": "word " * 2000}],
        })
        assert anthropic.status_code == 400
        assert anthropic.json()["error"]["type"] == "invalid_request_error"
        assert "1024 tokens" in anthropic.json()["error"]["message"]
        fine = await http.post("/v1/chat/completions", json=chat("short"))
        assert fine.status_code == 200
    assert len(backend.requests) == 1  # only the short one reached the backend


async def test_ready_reports_the_budget_in_force() -> None:
    backend = ScriptedBackend()
    async with forge_client(backend) as http:
        http.forge_state.budget = ContextBudget("forge-fast", 4096)  # type: ignore[attr-defined]
        ready = (await http.get("/ready")).json()
    assert ready["budget_mode"] == "backend"  # the configured mode (the fake's default)
    assert ready["context_budget"] == 4096


def test_ready_line_shows_the_budget() -> None:
    from forge_core.testing import build_state

    state = build_state(ScriptedBackend())
    state.budget = ContextBudget("manual", 3072)
    assert "budget=3072 (manual)" in cli.ready_line(state)
    state.budget = None
    assert "budget=unknown" in cli.ready_line(state)

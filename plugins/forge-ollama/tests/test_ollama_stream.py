"""NDJSON decoding at any byte boundary, and canonical chunks from Ollama's stream quirks.

Fixtures and the quirk each one records are listed in tests/fixtures/ollama/README.md.
"""

from __future__ import annotations

import json

import pytest
from fake_ollama import assemble, fixture_bytes, fixture_lines
from forge_ollama.ndjson import NDJSONDecoder
from forge_ollama.translate import OllamaStreamNormalizer

from forge_core.errors import BackendError, BackendProtocolError
from forge_core.turns import BackendChunk


def normalize(name: str) -> list[BackendChunk]:
    normalizer = OllamaStreamNormalizer()
    chunks = [c for c in map(normalizer.feed, fixture_lines(name)) if c is not None]
    assert normalizer.done or name == "chat_stream_error_midstream.ndjson"
    return chunks


# --- NDJSON ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["chat_stream_thinking.ndjson", "chat_stream_text_and_call.ndjson"]
)
def test_decoder_reassembles_lines_split_at_every_byte(name: str) -> None:
    data = fixture_bytes(name)
    expected = [json.loads(line) for line in data.splitlines()]
    assert "×" in data.decode() or "ü" in data.decode()  # multi-byte characters get split
    for cut in range(1, len(data)):
        decoder = NDJSONDecoder("ollama")
        values = decoder.feed(data[:cut]) + decoder.feed(data[cut:]) + decoder.close()
        assert values == expected, f"cut at byte {cut}"


def test_decoder_feeds_byte_by_byte() -> None:
    data = fixture_bytes("chat_stream_parallel_index0.ndjson")
    decoder = NDJSONDecoder("ollama")
    values = [v for i in range(len(data)) for v in decoder.feed(data[i : i + 1])]
    assert values == fixture_lines("chat_stream_parallel_index0.ndjson")
    assert decoder.close() == []


def test_decoder_handles_crlf_blank_lines_and_a_missing_final_newline() -> None:
    decoder = NDJSONDecoder("ollama")
    assert decoder.feed(b'{"a":1}\r\n\r\n{"b"') == [{"a": 1}]
    assert decoder.feed(b":2}") == []
    assert decoder.close() == [{"b": 2}]


def test_decoder_rejects_a_line_that_is_not_json() -> None:
    decoder = NDJSONDecoder("ollama")
    with pytest.raises(BackendProtocolError, match="not JSON") as info:
        decoder.feed(b'{"done":false}\n<html>502 Bad Gateway</html>\n')
    assert info.value.backend == "ollama"


# --- canonical tool calls --------------------------------------------------------------------


def test_repeated_index_zero_becomes_distinct_indices() -> None:
    chunks = normalize("chat_stream_parallel_index0.ndjson")
    fragments = [f for c in chunks for f in c.tool_calls]
    # Ollama said index 0 twice; forge numbers calls by arrival.
    assert [f.index for f in fragments] == [0, 1]
    assert [f.name for f in fragments] == ["get_temperature", "get_temperature"]
    assert [f.arguments for f in fragments] == ['{"city":"New York"}', '{"city":"London"}']
    ids = [f.id for f in fragments]
    assert all(i and i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert chunks[-1].finish_reason == "tool_calls"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (213, 48)


def test_calls_without_index_in_one_line_get_indices_in_order() -> None:
    chunks = normalize("chat_stream_parallel_no_index.ndjson")
    assert len(chunks[0].tool_calls) == 2
    fragments = chunks[0].tool_calls
    assert [f.index for f in fragments] == [0, 1]
    assert [json.loads(f.arguments)["location"] for f in fragments] == ["Paris, FR", "Toronto, CA"]
    assert fragments[0].id != fragments[1].id


def test_each_fragment_carries_name_and_complete_arguments() -> None:
    chunks = normalize("chat_stream_text_and_call.ndjson")
    (fragment,) = [f for c in chunks for f in c.tool_calls]
    assert fragment.name == "get_forecast"
    # Go's \u0026 and \u003c escapes decode; non-ASCII stays as is; key order is kept.
    assert fragment.arguments == '{"city":"Zürich","units":"°C","note":"rain & wind <24h>"}'
    assert "".join(c.text for c in chunks) == "Checking the forecast for Zürich first."


def test_text_stream_chunks_and_final_chunk() -> None:
    chunks = normalize("chat_stream_text.ndjson")
    assert [c.text for c in chunks[:3]] == ["The", " sky", " is"]
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    final = chunks[-1]
    assert (final.text, final.finish_reason) == ("", "stop")
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (26, 10)


def test_thinking_lines_become_reasoning_chunks() -> None:
    chunks = normalize("chat_stream_thinking.ndjson")
    assert chunks[0].reasoning == "Okay," and chunks[0].text == ""
    turn = assemble(chunks)
    assert turn.reasoning == "Okay, 17 × 23: 17 × 20 = 340, 17 × 3 = 51, total 391."
    assert turn.content == "17 × 23 = 391."


def test_length_cut_is_reported() -> None:
    assert normalize("chat_stream_length.ndjson")[-1].finish_reason == "length"


def test_mid_stream_error_line_raises_after_the_text_so_far() -> None:
    normalizer = OllamaStreamNormalizer()
    lines = fixture_lines("chat_stream_error_midstream.ndjson")
    texts = [normalizer.feed(line).text for line in lines[:-1]]
    assert texts == ["The", " sky", " is"]
    with pytest.raises(BackendError, match="an error was encountered while running the model"):
        normalizer.feed(lines[-1])
    assert not normalizer.done


def test_lines_after_done_are_ignored() -> None:
    normalizer = OllamaStreamNormalizer()
    for line in fixture_lines("chat_stream_tool_call.ndjson"):
        normalizer.feed(line)
    assert normalizer.feed({"message": {"role": "assistant", "content": "late"}}) is None


def test_stream_line_with_non_object_arguments_raises() -> None:
    line = fixture_lines("chat_stream_tool_call.ndjson")[0]
    line["message"]["tool_calls"][0]["function"]["arguments"] = "Tokyo"
    with pytest.raises(BackendProtocolError, match="get_weather"):
        OllamaStreamNormalizer().feed(line)


def test_stream_line_that_is_not_an_object_raises() -> None:
    with pytest.raises(BackendProtocolError):
        OllamaStreamNormalizer().feed([1, 2])

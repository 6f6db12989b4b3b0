"""Shared tools for the guardrail tests (imported by the test modules, not a conftest)."""

from __future__ import annotations

from typing import Any

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                },
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Web search",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "minLength": 1},
                    "filters": {
                        "type": "object",
                        "properties": {"site": {"type": "string"}, "year": {"type": "integer"}},
                        "required": ["site"],
                    },
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "mode": {"anyOf": [{"type": "integer"}, {"enum": ["fast", "deep"]}]},
                },
                "required": ["query"],
            },
        },
    },
    {"type": "function", "function": {"name": "list_files", "description": "No parameters"}},
]

NAMES = frozenset({"get_weather", "search", "list_files"})

"""Helpers for the operator-side tests: scrape and parse /metrics with prometheus-client."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels), parsed by prometheus-client's own parser."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of ``name`` over samples whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for (sample_name, sample_labels), v in samples.items():
        if sample_name == name and all(item in sample_labels for item in labels.items()):
            total += v
    return total


async def scrape(http: httpx.AsyncClient, **headers: str) -> dict[Any, float]:
    r = await http.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse_metrics(r.text)

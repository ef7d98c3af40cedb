"""GET /metrics: Prometheus text with the serving metrics."""

from __future__ import annotations

import pytest

from tests.serving import MODEL, metric

pytestmark = pytest.mark.anyio


async def test_metrics_count_requests_chars_and_latencies(make_app):
    async with make_app() as api:
        for _ in range(2):
            await api.client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 7})
        await api.client.post("/v1/completions", json={"model": "nope"})
        await api.client.post("/v1/generate", json={"model": MODEL, "length": 5, "stream": True})
        r = await api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric(text, "charnet_http_requests_total", route="/v1/completions", status="200") == 2
    assert metric(text, "charnet_http_requests_total", route="/v1/completions", status="404") == 1
    assert metric(text, "charnet_generated_chars_total", model=MODEL) == 19
    assert metric(text, "charnet_prompt_chars_total", model=MODEL) == 4
    assert metric(text, "charnet_time_to_first_char_seconds_count", model=MODEL) == 3
    assert metric(text, "charnet_request_duration_seconds_count", model=MODEL) == 3
    assert metric(text, "charnet_inter_char_seconds_count", model=MODEL) >= 1
    assert metric(text, "charnet_requests_running", model=MODEL) == 0
    assert metric(text, "charnet_requests_waiting", model=MODEL) == 0
    assert "charnet_client_disconnects_total" in text and "charnet_prompt_cache_misses_total" in text


async def test_labels_come_from_known_routes_and_methods_only(make_app):
    """Clients choose paths and methods; the metrics' label values may not be theirs, or
    20,000 random methods make 20,000 series."""
    from charnet.server.metrics import METHODS, OTHER

    async with make_app() as api:
        known = set((await api.client.get("/openapi.json")).json()["paths"])
        for i in range(40):
            await api.client.request(f"M{i}X", f"/v1/completions/{i}")
            await api.client.get(f"/nothing/{i}")
        text = (await api.client.get("/metrics")).text
    from prometheus_client.parser import text_string_to_metric_families

    samples = [s for f in text_string_to_metric_families(text) if f.name == "charnet_http_requests"
               for s in f.samples if s.name == "charnet_http_requests_total"]
    assert {s.labels["method"] for s in samples} <= METHODS | {OTHER}
    assert {s.labels["route"] for s in samples} <= known | {OTHER}
    assert len(samples) <= 4
    assert metric(text, "charnet_http_requests_total", method=OTHER, route=OTHER, status="404") == 40

"""The app factory and its lifespan: readiness, liveness, docs, the playground at the root."""

from __future__ import annotations

import httpx
import pytest

from charnet.server.app import create_app
from tests.serving import MODEL, OTHER, settings_for

pytestmark = pytest.mark.anyio


async def test_ready_is_503_until_the_lifespan_has_loaded_the_models(models_dir):
    app = create_app(settings_for(models_dir))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/health")).status_code == 200
        before = await client.get("/ready")
        assert before.status_code == 503 and before.json()["error"]["code"] == "not_ready"
        assert (await client.post("/v1/completions", json={"model": MODEL})).status_code == 503
        async with app.router.lifespan_context(app):
            after = await client.get("/ready")
            assert after.status_code == 200 and set(after.json()["models"]) == {MODEL, OTHER}
        assert (await client.get("/ready")).status_code == 503  # shut down


async def test_docs_openapi_and_root(make_app):
    async with make_app() as api:
        spec = (await api.client.get("/openapi.json")).json()
        assert {"/v1/completions", "/v1/generate", "/v1/models", "/health", "/ready", "/metrics"} <= set(spec["paths"])
        props = spec["components"]["schemas"]["CompletionRequest"]["properties"]
        assert props["max_tokens"]["description"] and props["top_k"]["description"]
        assert (await api.client.get("/docs")).status_code == 200
        root = await api.client.get("/")
        assert root.status_code == 200 and root.headers["content-type"].startswith("text/html")
        assert "charnet playground" in root.text


async def test_two_apps_in_one_process_share_nothing(make_app):
    async with make_app() as a, make_app() as b:
        await a.client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
        assert a.state.models[MODEL].engine is not b.state.models[MODEL].engine
        text = (await b.client.get("/metrics")).text
        assert 'charnet_generated_chars_total{model="tiny"}' not in text

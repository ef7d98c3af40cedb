"""The app factory and its lifespan: readiness, liveness, docs, the playground at the root."""

from __future__ import annotations

import os

import httpx
import pytest

from charnet.server.app import create_app
from tests.serving import MODEL, OTHER, metric, settings_for

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
        pids = {*a.state.models[MODEL].core.pids, *b.state.models[MODEL].core.pids}
        assert len(pids) == 2 and os.getpid() not in pids  # an engine process each
        ours, theirs = [(await api.client.get("/metrics")).text for api in (a, b)]
        assert metric(ours, "charnet_generated_chars_total", model=MODEL) == 2
        assert metric(theirs, "charnet_generated_chars_total", model=MODEL) == 0


async def test_health_and_ready_list_the_same_models(make_app):
    async with make_app() as api:
        health, ready = (await api.client.get("/health")).json(), (await api.client.get("/ready")).json()
    assert health["models"] == ready["models"] == [MODEL, OTHER]


async def test_openapi_declares_exactly_what_the_server_accepts(make_app):
    """The server's own limits are in its schema, and authentication only when it has a key."""
    async with make_app(max_chars_cap=300, max_n=3, max_prompt_chars=500, max_score_chars=40) as api:
        spec = (await api.client.get("/openapi.json")).json()
        vocab = api.state.models[MODEL].vocab.size
    schemas = spec["components"]["schemas"]
    completion, generate = schemas["CompletionRequest"]["properties"], schemas["GenerateRequest"]["properties"]

    def member(prop, kind):
        return next(m for m in prop.get("anyOf", [prop]) if m.get("type") == kind)

    assert member(completion["max_tokens"], "integer")["maximum"] == generate["length"]["maximum"] == 300
    assert member(completion["n"], "integer")["maximum"] == 3
    assert member(completion["prompt"], "string")["maxLength"] == generate["prompt"]["maxLength"] == 500
    assert member(completion["prompt"], "array")["maxItems"] == 3
    assert member(completion["top_k"], "integer")["maximum"] == member(generate["top_k"], "integer")["maximum"] == vocab
    assert schemas["ScoreRequest"]["properties"]["text"]["maxLength"] == 40
    stop = member(completion["stop"], "array")
    assert stop["items"]["minLength"] == 1 and stop["items"]["maxLength"] == 256 and stop["maxItems"] == 16
    assert "securitySchemes" not in spec["components"]
    assert all("security" not in op and "401" not in op["responses"] for ops in spec["paths"].values()
               for op in ops.values())
    async with make_app(api_key="k") as api:
        keyed = (await api.client.get("/openapi.json")).json()
    assert keyed["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, ops in keyed["paths"].items():
        for op in ops.values():
            assert ("security" in op) == path.startswith("/v1/"), path

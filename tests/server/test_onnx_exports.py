"""GET /v1/models/{model}/onnx/{file}: the ONNX export "run in this browser" loads,
found beside the checkpoint or made once into the cache."""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import asynccontextmanager

import httpx
import pytest

from charnet.checkpoint import load_checkpoint
from charnet.export.onnx import export_onnx
from charnet.server import onnx_exports
from charnet.server.app import create_app
from tests.serving import MODEL, OTHER, settings_for

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def client_for(models_dir):
    app = create_app(settings_for(models_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=120) as client:
            yield app, client


async def test_an_export_is_made_once_and_served(make_app, _isolated_cache):
    async with make_app() as api:
        card = (await api.client.get(f"/v1/models/{MODEL}")).json()
        assert card["charnet"]["onnx"] is True
        r = await api.client.get(f"/v1/models/{MODEL}/onnx/charnet.json")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        manifest = r.json()
        weights = (await api.client.get(f"/v1/models/{MODEL}/onnx/model.onnx")).content
        tokenizer = (await api.client.get(f"/v1/models/{MODEL}/onnx/tokenizer.json")).content
        folder = api.state.models[MODEL].onnx.folder()
    assert hashlib.sha256(weights).hexdigest() == manifest["files"]["model.onnx"]
    assert hashlib.sha256(tokenizer).hexdigest() == manifest["files"]["tokenizer.json"]
    assert manifest["cell"] == "lstm" and manifest["source"]["weights_sha256"].startswith(folder.name)
    assert folder.parent == _isolated_cache / "onnx"


async def test_bad_files_and_models_are_404s_in_openai_shape(make_app):
    async with make_app() as api:
        r = await api.client.get(f"/v1/models/{MODEL}/onnx/config.json")
        assert r.status_code == 404 and r.json()["error"]["param"] == "file"
        r = await api.client.get(f"/v1/models/{MODEL}/onnx/..%2Fconfig.json")
        assert r.status_code == 404
        r = await api.client.get("/v1/models/nope/onnx/model.onnx")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


async def test_an_export_beside_the_checkpoint_is_used_unless_it_is_stale(models_dir, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    beside = root / OTHER / "onnx"
    export_onnx(load_checkpoint(root / OTHER), beside)
    async with client_for(root) as (app, client):
        assert (await client.get(f"/v1/models/{OTHER}/onnx/charnet.json")).status_code == 200
        assert app.state.charnet.models[OTHER].onnx.folder() == beside
    manifest = json.loads((beside / "charnet.json").read_text())
    manifest["source"]["weights_sha256"] = "0" * 64  # exported from other weights
    (beside / "charnet.json").write_text(json.dumps(manifest))
    async with client_for(root) as (app, client):
        r = await client.get(f"/v1/models/{OTHER}/onnx/charnet.json")
        assert r.status_code == 200 and r.json()["source"]["weights_sha256"] != "0" * 64
        assert app.state.charnet.models[OTHER].onnx.folder() != beside


async def test_without_the_extra_or_an_export_there_is_none(make_app, monkeypatch):
    monkeypatch.setattr(onnx_exports, "can_export", lambda: False)
    async with make_app() as api:
        card = (await api.client.get(f"/v1/models/{MODEL}")).json()
        r = await api.client.get(f"/v1/models/{MODEL}/onnx/model.onnx")
    assert card["charnet"]["onnx"] is False
    assert r.status_code == 404 and r.json()["error"]["code"] == "onnx_unavailable"
    assert "charnet[onnx]" in r.json()["error"]["message"]

"""/openapi.json: FastAPI's schema, saying exactly what this server accepts.

The request models bound their fields with constants (`charnet.server.schemas`); the
bounds a server's settings set (--max-chars-cap, --max-n, --max-prompt-chars,
--max-score-chars, and the vocabulary of its models for top_k) are filled in here from
each field's ``x-charnet-limit`` mark. Authentication is declared only when the server
has a key, and then on /v1/ alone, as the server applies it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from charnet.config import MAX_VOCAB
from charnet.server.deps import ServerState
from charnet.server.middleware import PROTECTED
from charnet.server.respond import limits


def _members(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return prop["anyOf"] if "anyOf" in prop else [prop]


def _tighten(schema: dict[str, Any], key: str, bound: int) -> None:
    schema[key] = min(schema.get(key, bound), bound)


def _apply(prop: dict[str, Any], marks: dict[str, str], values: dict[str, int]) -> None:
    for of, setting in marks.items():
        bound = values[setting]
        for member in _members(prop):
            kind = member.get("type")
            if of == "value" and kind == "integer":
                _tighten(member, "maximum", bound)
                if isinstance(prop.get("default"), int):
                    _tighten(prop, "default", bound)  # as check_limits applies it
            elif of == "length" and kind == "string":
                _tighten(member, "maxLength", bound)
            elif of == "length" and kind == "array":
                _tighten(member["items"], "maxLength", bound)
            elif of == "items" and kind == "array":
                _tighten(member, "maxItems", bound)


def schema(app: FastAPI, state: ServerState) -> dict[str, Any]:
    """The app's OpenAPI document (kept once the models are loaded)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    # top_k: the largest vocabulary served (each model checks its own)
    values = limits(state.settings, max((m.vocab.size for m in state.models.values()), default=MAX_VOCAB))
    for component in doc.get("components", {}).get("schemas", {}).values():
        for prop in component.get("properties", {}).values():
            if marks := prop.get("x-charnet-limit"):
                _apply(prop, marks, values)
    if len(state.settings.models) > 1:  # "may be omitted when the server has one model": not this one
        for name in ("GenerateRequest", "ScoreRequest"):
            component = doc["components"]["schemas"][name]
            model = component["properties"]["model"]
            component["properties"]["model"] = {**next(m for m in model["anyOf"] if m["type"] == "string"),
                                                "title": model.get("title"), "description": model["description"]}
            component["required"] = sorted({*component.get("required", []), "model"})
    keyed = bool(state.settings.api_key)
    if keyed:
        doc["components"]["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer", "description": "The server's CHARNET_API_KEY."}}
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            if path.startswith(PROTECTED) and keyed:
                operation["security"] = [{"bearer": []}]
            else:
                operation.get("responses", {}).pop("401", None)  # no key, no 401
    if state.ready:
        app.openapi_schema = doc
    return doc

"""GET /v1/models: OpenAI's list shape plus charnet's metadata."""

from __future__ import annotations

import pytest

from tests.serving import MODEL, OTHER

pytestmark = pytest.mark.anyio


async def test_list_and_get(make_app):
    async with make_app() as api:
        listing = (await api.client.get("/v1/models")).json()
        one = (await api.client.get(f"/v1/models/{MODEL}")).json()
    assert listing["object"] == "list"
    cards = {m["id"]: m for m in listing["data"]}
    assert set(cards) == {MODEL, OTHER}
    assert one == cards[MODEL]
    assert one["object"] == "model" and one["owned_by"] == "charnet" and isinstance(one["created"], int)
    meta = one["charnet"]
    assert (meta["cell"], meta["layers"], meta["hidden"], meta["tokenizer"]) == ("lstm", 2, 32, "char")
    assert meta["parameters"] > 0 and meta["val_bits_per_char"] > 0
    assert cards[OTHER]["charnet"]["cell"] == "gru" and cards[OTHER]["charnet"]["val_bits_per_char"] is None

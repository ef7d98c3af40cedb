"""The messages between the API process and an engine process: arrays cross with their
dtype and shape, and what cannot be sent or received is refused with msgspec's errors."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from charnet.server.core import protocol
from charnet.server.core.protocol import Cancel, ScoreText


def test_an_array_crosses_with_its_dtype_and_shape():
    ids = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint32)
    sent = ScoreText(job=7, ids=ids, top=2, unknown=0, timeout=30.0)
    got = protocol.commands().decode(protocol.encoder().encode(sent))
    assert isinstance(got, ScoreText) and got.job == 7 and got.ids.dtype == np.uint32
    assert np.array_equal(got.ids, ids)


def test_what_msgpack_cannot_hold_is_refused_when_sent():
    with pytest.raises(TypeError, match="cannot send a object"):
        protocol.encoder().encode(Cancel(job=object()))


def test_a_malformed_array_is_a_validation_error():
    bad = msgspec.msgpack.encode({"type": "ScoreText", "job": 1, "ids": ["<u4", [3], b"\x00\x00"], "top": 0,
                                  "unknown": 0, "timeout": 1.0})
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.ids`"):
        protocol.commands().decode(bad)

"""What crosses between the API process and a model's engine process, as msgspec messages.

They travel as frames over a socket pair (`charnet.server.core.wire`, which says why not
ZeroMQ). Messages are msgpack, encoded and decoded by msgspec against these types, as
vLLM's engine core does: several times faster than pickle for the per-step batches, and
a malformed or unexpected message is a decoding error, never code run from a socket.

API process -> engine: `Generate`, `ScoreText`, `Cancel`, `Share`, `Shutdown`.
Engine -> API process: `Ready` once loaded, `Failed` if it could not load, then `Step`s:
the requests that started (their `Choice`s), every `Out` of every row at once, and the
engine's counters (`Stats`). The engine loop's news goes out at once when any of it is
urgent; otherwise the rounds within `EngineCore.window` share one message, a choice's
characters from them joined into one `Out` (`charnet.server.core.loop`,
`charnet.server.core.news`).
Requests carry their own types (`GenerationRequest` with its `SamplingParams` and
`Constraint`), which validate themselves again when decoded.
"""

from __future__ import annotations

import msgspec
import numpy as np

from charnet.inference.generation import CharLogprob
from charnet.inference.request import GenerationRequest
from charnet.inference.scoring import Score


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    """What a choice is from its start: its seed and its prompt's length in tokens."""

    seed: int
    prompt_tokens: int


class Out(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """What one request got from one step: a piece of a choice, or the end."""

    index: int = -1
    """The choice the piece belongs to (-1: the request as a whole)."""
    text: str = ""
    generated: int = 0
    """Tokens the choice has generated so far."""
    finish_reason: str | None = None
    logprobs: tuple[CharLogprob, ...] = ()
    error: tuple[int, str] | None = None
    """(status, message) when the request failed or timed out."""
    end: bool = False
    """No more events follow."""
    score: Score | None = None
    """A score request's result."""


SHUTTING_DOWN = (503, "the server is shutting down")
"""The error of every request still running or queued when the engine shuts down."""


# -- API process -> engine ------------------------------------------------------------------

class Generate(msgspec.Struct, tag=True):
    """Start a generation request: groups of (request, n) sequences."""

    job: int
    groups: list[tuple[GenerationRequest, int]]
    timeout: float
    """Seconds left of the request's --request-timeout when it was sent."""
    pace: float = 0.0
    """Seconds between two frames of its response (a stream's --stream-interval;
    inf when only its start, first characters and end are read as they come): how long
    its characters may gather in the engine before they go out."""


class ScoreText(msgspec.Struct, tag=True):
    """Score a text's token ids from the initial state, with the `top` alternatives."""

    job: int
    ids: np.ndarray
    top: int
    unknown: int
    timeout: float


class Cancel(msgspec.Struct, tag=True):
    """The request's client went away: drop it before the next step."""

    job: int


class Share(msgspec.Struct, tag=True):
    """Step on this many torch threads from now on (the model's engines divide the cores
    among those with work: `charnet.server.core.client`)."""

    threads: int


class Shutdown(msgspec.Struct, tag=True):
    """End every request with a 503 and exit."""


Command = Generate | ScoreText | Cancel | Share | Shutdown


# -- engine -> API process ------------------------------------------------------------------

class Stats(msgspec.Struct, array_like=True):
    """The engine's gauges now, and its counters since the process started."""

    running: int = 0
    """Requests with a row in the batch, and texts being scored."""
    waiting: int = 0
    """Requests holding no row."""
    rows: int = 0
    """Sequences in the batch."""
    cache_hits: int = 0
    cache_misses: int = 0
    cache_bytes: int = 0
    cache_entries: int = 0
    primed: int = 0
    """Prompt tokens run through the model (what the cache's hits did not save)."""


class Step(msgspec.Struct, tag=True):
    """What one round of the engine loop produced."""

    started: list[tuple[int, list[Choice]]]
    """Requests that started this round: (job, its choices), before their events."""
    events: list[tuple[int, Out]]
    stats: Stats


class Ready(msgspec.Struct, tag=True):
    """The engine process has loaded its model and warmed it up."""

    pid: int


class Failed(msgspec.Struct, tag=True):
    """The engine process could not start (the message says why); it exits."""

    message: str


Reply = Step | Ready | Failed


def _encode_array(obj: object) -> object:
    """msgspec's hook for what msgpack has no type for: numpy arrays, as (dtype, shape,
    bytes); anything else is a TypeError, as for any value msgspec cannot encode."""
    if isinstance(obj, np.ndarray):
        return obj.dtype.str, obj.shape, obj.tobytes()
    raise TypeError(f"cannot send a {type(obj).__name__}")


def _decode_array(kind: type, obj: object) -> object:
    """The array `_encode_array` sent. A TypeError or ValueError here (a malformed array)
    reaches the receiver as msgspec's ValidationError, like any other bad message."""
    if kind is not np.ndarray:
        raise TypeError(f"cannot receive a {kind}")
    dtype, shape, data = obj
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


def encoder() -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder(enc_hook=_encode_array)


def commands() -> msgspec.msgpack.Decoder:
    """Decodes what the engine receives."""
    return msgspec.msgpack.Decoder(Command, dec_hook=_decode_array)


def replies() -> msgspec.msgpack.Decoder:
    """Decodes what the API process receives."""
    return msgspec.msgpack.Decoder(Reply, dec_hook=_decode_array)

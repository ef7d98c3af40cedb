"""Prometheus metrics, one registry per app (so apps in one process never mix counts).

Per model: running and waiting requests, characters generated, time to first
character, inter-character and end-to-end latency, client disconnects, timeouts, the
prompt-state cache's hits, misses, entries and bytes, how many of its engine processes
are up and how often one was restarted. What the engine processes count reaches here with
each of their steps (`charnet.server.core.client`). Per route: requests by status code, counted
by an ASGI middleware.
"""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"

# Characters come every few milliseconds; first characters and whole requests take longer.
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The app's metrics and its registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter("charnet_http_requests", "HTTP requests answered, by route and status code.",
                                     ["method", "route", "status"], registry=r)
        self.running = Gauge("charnet_requests_running", "Requests generating now.", ["model"], registry=r)
        self.waiting = Gauge("charnet_requests_waiting", "Requests waiting for a batch slot.", ["model"], registry=r)
        self.batch_rows = Gauge("charnet_batch_sequences", "Sequences in the model's batch.", ["model"], registry=r)
        self.chars = Counter("charnet_generated_chars", "Characters (tokens) generated.", ["model"], registry=r)
        self.prompt_chars = Counter("charnet_prompt_chars", "Prompt characters (tokens) received.", ["model"],
                                    registry=r)
        self.ttfc = Histogram("charnet_time_to_first_char_seconds", "From a request's arrival to its first "
                              "generated character.", ["model"], buckets=_SLOW, registry=r)
        self.inter_char = Histogram("charnet_inter_char_seconds", "Time between successive characters of a "
                                    "request, as handed to the client.", ["model"], buckets=_FAST, registry=r)
        self.e2e = Histogram("charnet_request_duration_seconds", "A generation request from arrival to its last "
                             "character.", ["model"], buckets=_SLOW, registry=r)
        self.disconnects = Counter("charnet_client_disconnects", "Requests cancelled because the client went away.",
                                   ["model"], registry=r)
        self.timeouts = Counter("charnet_request_timeouts", "Requests stopped by --request-timeout.", ["model"],
                                registry=r)
        self.rejected = Counter("charnet_requests_rejected", "Requests refused with 429 (queue full).", ["model"],
                                registry=r)
        self.scored_chars = Counter("charnet_scored_chars", "Characters scored by /v1/score.", ["model"],
                                    registry=r)
        self.failures = Counter("charnet_generation_failures", "Generations that failed with an error.", ["model"],
                                registry=r)
        self.cache_hits = Counter("charnet_prompt_cache_hits", "Prompts primed from a cached state.", ["model"],
                                  registry=r)
        self.cache_misses = Counter("charnet_prompt_cache_misses", "Prompts primed from scratch.", ["model"],
                                    registry=r)
        self.primed_chars = Counter("charnet_prompt_primed_chars", "Prompt characters (tokens) run through the "
                                    "model: those the prompt-state cache did not have.", ["model"], registry=r)
        self.cache_bytes = Gauge("charnet_prompt_cache_bytes", "Bytes held by the prompt-state cache.", ["model"],
                                 registry=r)
        self.cache_entries = Gauge("charnet_prompt_cache_entries", "States held by the prompt-state cache.",
                                   ["model"], registry=r)
        self.engine_up = Gauge("charnet_engine_up", "The model's engine processes that serve now (--engines "
                               "when all do).", ["model"], registry=r)
        self.engine_restarts = Counter("charnet_engine_restarts", "Times one of the model's engine processes was "
                                       "started again after it stopped.", ["model"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def of(self, model: str) -> SimpleNamespace:
        """Every per-model metric, labelled for `model` once: ``metrics.of("m").chars.inc()``.
        (A `labels()` lookup costs microseconds, and streams count every frame.)"""
        return SimpleNamespace(**{name: metric.labels(model) for name, metric in vars(self).items()
                                  if getattr(metric, "_labelnames", None) == ("model",)})


class RequestCounter:
    """ASGI middleware counting every HTTP response by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            # Labels come from fixed sets only, the route's template (/v1/models) and the
            # standard methods, never from the raw request: clients choosing paths or
            # methods would otherwise create a series each.
            route = getattr(scope.get("route"), "path", None) or OTHER
            method = scope.get("method", "")
            self.metrics.http_requests.labels(method if method in METHODS else OTHER, route, str(status[0])).inc()

"""One router per resource: completions, generate, models, and health/ready/metrics."""

from charnet.server.responses import ErrorResponse

ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in {
    400: "Invalid request: a wrong type or value, named in `param`.",
    401: "Missing or wrong API key (when the server has one).",
    404: "No such model.",
    408: "The request ran past the server's --request-timeout.",
    413: "Request body too large.",
    429: "The model's running slots and queue are full; retry after `Retry-After` seconds.",
    503: "The server is loading its models or shutting down.",
}.items()}
"""Error responses every generation route documents (OpenAI's error shape)."""

SSE_EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string", "description": "A JSON object in the response's shape (one chunk), an error "
                                              "object, or the literal [DONE]."},
    "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}
"""One Server-Sent Event, as OpenAPI describes each event of a text/event-stream."""

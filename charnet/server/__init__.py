"""`charnet serve`: an OpenAI-compatible HTTP server with continuous batching.

`charnet.server.app.create_app` builds the FastAPI app, which does HTTP, validation,
streaming and metrics; each model's engine loop runs in a process of its own
(`charnet.server.core`); the routers hold the endpoints.
"""

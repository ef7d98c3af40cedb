"""`charnet serve`: an OpenAI-compatible HTTP server with continuous batching.

`charnet.server.app.create_app` builds the FastAPI app; `charnet.server.scheduler`
runs each model's engine loop; the routers hold the endpoints.
"""

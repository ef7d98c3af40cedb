"""`charnet serve`: run the HTTP server (see `charnet.server`)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Annotated, Optional

import typer

from charnet.cli import app, fail
from charnet.cli.train import Device
from charnet.inference.request import MAX_CHARS
from charnet.server.settings import API_KEY_ENV, MAX_N, Settings

Opt = typer.Option
D = Settings()


def _checkpoint_dir(path: Path) -> Path | None:
    """The checkpoint `path` is or holds (a run directory's best/last), else None."""
    from charnet.checkpoint import resolve_dir
    from charnet.errors import CheckpointError

    try:
        return resolve_dir(path)
    except CheckpointError:
        return None


def resolve_models(specs: list[str]) -> dict[str, str]:
    """Model name -> checkpoint directory for `charnet serve`'s arguments.

    No argument: every checkpoint under the checkpoint roots. A checkpoint or run
    directory: that model, named after the directory. A directory of such directories:
    each of them. Anything else is looked up by name under the checkpoint roots.
    """
    from charnet.checkpoint import checkpoint_roots, find, resolve_dir
    from charnet.errors import CheckpointError

    found: dict[str, Path] = {}

    def add(name: str, directory: Path) -> None:
        if name in found and found[name] != directory:
            raise CheckpointError(f"two models would be called {name!r} ({found[name]} and {directory}); "
                                  "serve them from directories with different names")
        found[name] = directory

    if not specs:
        # Checkpoint and run directories alike, under every root (earlier roots win).
        for root in checkpoint_roots():
            if root.is_dir():
                for d in sorted(root.iterdir()):
                    if d.is_dir() and not d.name.startswith(".") and d.name not in found:
                        if (directory := _checkpoint_dir(d)) is not None:
                            found[d.name] = directory
        if not found:
            roots = ", ".join(str(r) for r in checkpoint_roots())
            raise CheckpointError(f"no checkpoints found under {roots}; pass a checkpoint directory")
    for spec in specs:
        path = Path(spec).expanduser()
        checkpoint = _checkpoint_dir(path) if path.is_dir() else None
        if path.is_dir() and checkpoint is None:
            children = [(d.name, c) for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")
                        and (c := _checkpoint_dir(d)) is not None]
            if not children:
                raise CheckpointError(f"{spec}: not a checkpoint, and holds no checkpoint directories")
            for name, directory in children:
                add(name, directory)
        elif path.exists():
            add(path.resolve().name, checkpoint or resolve_dir(path))  # a file: resolve_dir says what is wrong
        else:
            add(str(spec), find(spec))
    return {name: str(directory.resolve()) for name, directory in found.items()}


def servable(models: dict[str, str]) -> dict[str, str]:
    """The models whose checkpoints load, each broken one named in one warning line now
    (not a worker's crash later); an error, in one line, if none loads."""
    from charnet.checkpoint import load_checkpoint
    from charnet.errors import CharnetError, CheckpointError

    good, broken = {}, {}
    for name, directory in models.items():
        try:
            load_checkpoint(Path(directory))
        except CharnetError as e:
            broken[name] = " ".join(str(e).split())
        else:
            good[name] = directory
    if not good:
        raise CheckpointError("; ".join(broken.values()))
    for name, why in broken.items():
        typer.echo(f"charnet serve: warning: not serving {name}: {why}", err=True)
    return good


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            reason = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            fail(f"--host {host} --port {port}: {reason}", "serve")


@app.command()
def serve(
    checkpoints: Annotated[Optional[list[str]], typer.Argument(
        help="Checkpoint or run directories, directories holding several, or names under checkpoints/. "
             "\\[default: every checkpoint under the checkpoint roots]", show_default=False)] = None,
    host: Annotated[str, Opt(help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, Opt(min=1, max=65535, help="Port to listen on.")] = 8000,
    max_concurrency: Annotated[int, Opt(min=1, help="Sequences generated at once per model (its batches, "
                                                    "divided among its engines); a request takes prompts x "
                                                    "n.")] = D.max_concurrency,
    max_queue: Annotated[int, Opt(min=0, help="Sequences that may wait for a slot per model; beyond, 429.")] = D.max_queue,
    max_chars_cap: Annotated[int, Opt(min=1, max=MAX_CHARS, help="Largest max_tokens / length a request may ask "
                                                                 "for.")] = D.max_chars_cap,
    max_n: Annotated[int, Opt(min=1, max=MAX_N, help="Most choices (n) and prompts one request may ask for; also the "
                                                     "most rows one request holds while others wait.")] = D.max_n,
    max_prompt_chars: Annotated[int, Opt(min=1, help="Longest prompt, in characters (400 above): priming costs a "
                                                     "token a step.")] = D.max_prompt_chars,
    max_response_tokens: Annotated[int, Opt(min=1, help="Largest response a request may ask for, in token entries: "
                                                        "choices x (echoed prompt + max_tokens) x (1 + logprobs); "
                                                        "/v1/score: characters x (1 + top).")] = D.max_response_tokens,
    request_timeout: Annotated[float, Opt(min=0.001, help="Seconds a request may queue, prime and generate in all "
                                                          "(408 after).")] = D.request_timeout,
    cache_mb: Annotated[float, Opt(min=0, help="Prompt-state cache per model, MiB (0: off).")] = D.cache_mb,
    max_score_chars: Annotated[int, Opt(min=2, help="Longest text /v1/score accepts, in characters.")] = D.max_score_chars,
    workers: Annotated[int, Opt(min=1, help="Worker processes on the one port, each with every model.")] = 1,
    max_body_kb: Annotated[int, Opt(min=1, help="Largest request body, KiB (413 above).")] = D.max_body_bytes >> 10,
    threads: Annotated[Optional[int], Opt(min=1, help="Torch threads of each model's engine processes, divided "
                                                      "among those with work (one while requests arrive, where "
                                                      "that gives the same text). \\[default: the cores divided "
                                                      "among --workers]", show_default=False)] = D.threads,
    engines: Annotated[Optional[int], Opt(min=1, help="Engine processes per model; each request goes to the one "
                                                      "holding the fewest sequences. \\[default: 2 on a CPU with "
                                                      "2 threads or more, else 1]", show_default=False)] = D.engines,
    stream_interval: Annotated[float, Opt(min=0, help="Seconds between two chunks of one stream (about): what is "
                                                     "generated meanwhile goes out together, so 64 streams cost "
                                                     "the server a few thousand frames a second, not one per "
                                                     "character (0: a chunk per step).")] = D.stream_interval,
    device: Annotated[Device, Opt(help="Device to run the models on.")] = Device.cpu,
    max_connections: Annotated[Optional[int], Opt(min=1, help="Most open connections per process; uvicorn answers "
                                                              "503 beyond. \\[default: no limit]",
                                                  show_default=False)] = None,
    keep_alive: Annotated[float, Opt(min=0, help="Seconds an idle keep-alive connection stays open.")] = 5.0,
    log_level: Annotated[str, Opt(help="uvicorn log level.")] = "info",
) -> None:
    """Serve models over HTTP: OpenAI-compatible /v1/completions, /v1/generate, /v1/models,
    /v1/score, /health, /ready, /metrics, the playground at /, docs at /docs. Set CHARNET_API_KEY
    to require a bearer key."""
    import uvicorn

    settings = Settings(models=servable(resolve_models(checkpoints or [])), device=device.value,
                        max_concurrency=max_concurrency, max_queue=max_queue, max_chars_cap=max_chars_cap,
                        max_n=max_n, max_prompt_chars=max_prompt_chars, max_response_tokens=max_response_tokens,
                        request_timeout=request_timeout, cache_mb=cache_mb, max_score_chars=max_score_chars,
                        max_body_bytes=max_body_kb << 10, stream_interval=stream_interval,
                        threads=threads or max(1, (os.cpu_count() or 1) // workers), engines=engines)
    _check_port(host, port)
    os.environ.update(settings.to_env())  # how worker processes get the settings
    keyed = "with" if os.environ.get(API_KEY_ENV) else "without"
    typer.echo(f"charnet serve: {', '.join(settings.models)} on http://{host}:{port} ({keyed} an API key)",
               err=True)
    # Slow clients (a body trickled in, a response read slowly) hold a connection, not the
    # engine; protection from them belongs to the proxy in front (deploy/nginx.conf).
    uvicorn.run("charnet.server.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, timeout_graceful_shutdown=10, limit_concurrency=max_connections,
                timeout_keep_alive=keep_alive)

"""Each served model's engine core, in processes of its own.

The API process (the event loop, request validation, SSE/NDJSON framing, metrics) and
a model's engine loop (batching, priming, the prompt cache, sampling) would otherwise
share one interpreter lock, and every frame written to a client would delay a step of
the batch. As in vLLM's V1 engine, they are two processes:

- `protocol`: the messages, msgspec structs;
- `wire`: how they travel, length-prefixed frames over a socket pair;
- `loop`: `EngineCore`, the engine loop itself (continuous batching, fairness, timeouts,
  scoring), one `Step` message a round;
- `process`: the engine process's main: load, warm up, serve commands, exit with the
  API process;
- `threads`: how many torch threads it steps on (its share of the model's, one while
  requests arrive);
- `engine_process`: `EngineProcess`, one engine process from the API process's side:
  started from a forkserver, read, watched until it exits, stopped;
- `client`: `EngineClient`, a model's engines as the API process uses them: restart,
  admission, routing, thread shares, commands, and each step's events handed to the
  waiting requests.
"""

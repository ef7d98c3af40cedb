"""The inference side: a request, its sampling controls and constraints, the step
kernel, continuous batching, the prompt-state cache, the engine and scoring. It imports
the shared model pieces and nothing from `charnet.training`."""

"""charnet: character-level recurrent language models that train, sample and serve."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from charnet.inference.engine import Engine


def load(path_or_name: str, device: str = "cpu") -> Engine:
    """Load a checkpoint for generation: ``charnet.load("shakespeare").generate("ROMEO:")``.

    `path_or_name` is a checkpoint directory, a run directory (its best/ is used) or a
    name under checkpoints/; `device` is ``cpu``, ``cuda``, ``mps`` or ``auto``. See
    `charnet.inference.engine.Engine` for generate, stream and score.
    """
    from charnet.inference.engine import load as _load  # torch loads only when a model does

    return _load(path_or_name, device)

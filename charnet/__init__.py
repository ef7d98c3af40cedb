"""charnet: character-level recurrent language models that train, sample and serve."""

__version__ = "0.1.0"

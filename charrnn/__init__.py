"""charrnn: character-level language models (LSTM/GRU/RNN) for the command line and for Python.

    import charrnn
    model = charrnn.load("checkpoints/notes")
    print(model.generate("ROMEO:", length=500, seed=1))

Importing the package imports nothing heavy: `charrnn --help` answers without loading torch, and so does
`import charrnn`. load, train and Model (charrnn.api) import torch on first use; CharRNNError and UsageError
(charrnn.errors) are light. The torch version gate lives with the code that loads checkpoints (checkpoint.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from charrnn.errors import CharRNNError, UsageError
from charrnn.version import __version__

__all__ = ["CharRNNError", "Model", "Trained", "UsageError", "__version__", "load", "train"]

if TYPE_CHECKING:
    from charrnn.api import Model, Trained, load, train

_API = {"Model", "Trained", "load", "train"}


def __getattr__(name: str) -> Any:
    if name in _API:  # lazily: torch loads here, on first use, not at `import charrnn`
        from charrnn import api

        return getattr(api, name)
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")

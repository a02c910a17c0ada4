"""charrnn's version, in a module of its own: checkpoints and downloads record it, and importing it imports
nothing else (the package root lazily imports the whole API)."""

__version__ = "0.1.0"

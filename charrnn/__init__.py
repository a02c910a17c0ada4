"""charrnn: character-level language models (LSTM/GRU/RNN) for the command line.

Importing the package imports nothing heavy: `charrnn --help` answers without loading torch. The torch version
gate lives with the code that loads checkpoints (checkpoint.py).
"""

__version__ = "0.1.0"

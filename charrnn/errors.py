"""The one exception family library code raises for problems a user can fix.

cli.py turns these into one sentence on stderr and an exit code; library modules never print or exit.
"""


class CharRNNError(Exception):
    """A problem with the user's input, data or environment (exit code 1)."""

    exit_code = 1


class UsageError(CharRNNError):
    """A bad combination or value of options that the parser could not catch (exit code 2)."""

    exit_code = 2


class CorpusError(CharRNNError):
    """The corpus cannot be read, decoded or used for training."""


class CheckpointError(CharRNNError):
    """A checkpoint is missing, unreadable, corrupt, foreign or unsafe."""


class CheckpointWriteError(CharRNNError):
    """A checkpoint could not be written; the previous one is left untouched."""


class DivergedError(CharRNNError):
    """Training produced too many consecutive non-finite losses or gradients."""

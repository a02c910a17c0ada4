"""The one exception family library code raises for problems a user can fix.

cli.py turns these into one sentence on stderr and an exit code; library modules never print or exit.
"""

from __future__ import annotations


class CharRNNError(Exception):
    """A problem with the user's input, data or environment (exit code 1)."""

    exit_code = 1


class UsageError(CharRNNError):
    """A bad combination or value of options that the parser could not catch (exit code 2)."""

    exit_code = 2


class CorpusError(CharRNNError):
    """The corpus cannot be read, decoded or used for training."""


class CheckpointError(CharRNNError):
    """A checkpoint is missing, unreadable, corrupt, foreign or unsafe.

    `problem` is the short form ("is truncated") that a caller trying several files can list after each name."""

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem or message

    @classmethod
    def about(cls, path, problem: str, advice: str) -> CheckpointError:
        return cls(f"checkpoint {path} {problem}; {advice}.", problem)


class CheckpointWriteError(CharRNNError):
    """A checkpoint could not be written; the previous one is left untouched."""


class DivergedError(CharRNNError):
    """Training produced too many consecutive non-finite losses or gradients."""

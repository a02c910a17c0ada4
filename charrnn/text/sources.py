"""Where a corpus's text comes from: each source resolved to the inputs that are read, a directory walked.

A source is a text file, a directory (its UTF-8 text files, recursively, in sorted path order), "-" for standard
input, or a named corpus (text/corpora.py; a built-in one is built here, a downloaded one must be there already).
A directory skips, and lists in Corpus.skipped, what is not text: hidden files and directories, binary files
(a NUL in the first 8 KiB), files that are not UTF-8 anywhere, and run directories (`checkpoints/`, a
directory holding metrics.jsonl and *.pt files or a .charrnn-run marker, or one passed in `exclude`).
A file named explicitly is never skipped: what is wrong with it is an error. The walk judges names and kinds;
contents are judged while reading (encoder.py), and check_directories refuses a directory left with no text.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from charrnn.errors import CorpusError
from charrnn.text import corpora

MARKER_NAME = ".charrnn-run"  # in a directory, says it is a charrnn run (checkpoint/rundir.py puts it there)


@dataclass(frozen=True)
class Input:
    label: str  # how error messages name it
    path: Path | None  # None: standard input
    stream: bool  # read once (stdin, FIFO): spooled to disk in pass 1 for pass 2
    strip_bom: bool = True
    sniff: bool = True  # refuse it if its first 8 KiB hold a NUL byte
    skippable: bool = False  # found by walking a directory: skipped, not refused, when it is not UTF-8 text

    @property
    def file(self) -> Path:
        """The path of an input that has one (every input but standard input)."""
        if self.path is None:
            raise ValueError(f"{self.label} has no path")
        return self.path


@dataclass(frozen=True)
class Resolved:
    name: str
    source: str
    inputs: list[Input]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # by the directory walk


def named_hint() -> str:
    return f"or a named corpus ({', '.join(corpora.REGISTRY)}; `charrnn corpus list` describes them)"


def resolve(source: str, cache_dir: Path, excluded: frozenset[Path]) -> Resolved:
    if source == "-":
        return Resolved("stdin", "-", [Input("standard input", None, stream=True)])
    path = Path(source)
    if not os.path.lexists(path):
        if source in corpora.REGISTRY:
            return Resolved(source, source, [Input(source, _named_path(source, cache_dir), stream=False)])
        raise CorpusError(
            f"{source!r} is not a file, a directory or a named corpus; give a path to a UTF-8 text file or "
            f"directory, '-' for standard input, {named_hint()}."
        )
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise CorpusError(f"cannot read {source}: {err.strerror}; check the path and its permissions.") from err
    if stat.S_ISDIR(mode):
        inputs, skipped = _directory_inputs(path, excluded)
        return Resolved(path.resolve().name or "corpus", str(path.resolve()), inputs, skipped)
    # Anything else that is not a regular file (a FIFO, /dev/stdin, <(command)) is read once as a stream.
    stream = not stat.S_ISREG(mode)
    return Resolved(path.stem or path.name, str(path.absolute()), [Input(source, path, stream=stream)])


def _directory_inputs(root: Path, excluded: frozenset[Path]) -> tuple[list[Input], list[tuple[str, str]]]:
    """The candidate files under `root`, sorted, and what the walk itself skipped; contents are judged in pass 1."""

    def fail(err: OSError) -> None:
        raise CorpusError(f"cannot list {err.filename}: {err.strerror}; check its permissions.") from err

    resolved_root = root.resolve()
    files, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        here = Path(dirpath)
        if here != root and _is_run_dir(filenames):
            skipped.append((os.path.abspath(here), "run directory"))
            dirnames[:] = []
            continue
        resolved_here = resolved_root / here.relative_to(root)  # os.walk follows no links below the root
        kept = []
        for d in dirnames:
            reason = _directory_skip(here / d, resolved_here / d, excluded)
            if reason:
                skipped.append((os.path.abspath(here / d), reason))
            else:
                kept.append(d)
        dirnames[:] = kept  # prune in place
        for f in filenames:
            reason = _file_skip(here / f)
            if reason:
                skipped.append((os.path.abspath(here / f), reason))
            else:
                files.append(here / f)
    if not files:
        raise _no_text_files(root)
    return [Input(str(f), f, stream=False, skippable=True) for f in sorted(files)], skipped


def _directory_skip(path: Path, resolved: Path, excluded: frozenset[Path]) -> str | None:
    if path.name.startswith("."):
        return "hidden"
    if path.is_symlink():
        return "symbolic link"  # os.walk would not descend into it either
    if path.name == "checkpoints" or resolved in excluded:
        return "run directory"
    return None


def _file_skip(path: Path) -> str | None:
    if path.name.startswith("."):
        return "hidden"
    if not path.is_file():
        return "not a regular file"  # a FIFO would block the walk, a device never ends
    return None


def _is_run_dir(filenames: list[str]) -> bool:
    """A charrnn run directory: its metrics.jsonl would otherwise become part of the corpus it trains on."""
    if MARKER_NAME in filenames:
        return True
    return "metrics.jsonl" in filenames and any(f.endswith(".pt") for f in filenames)


def _no_text_files(root: Path | str) -> CorpusError:
    return CorpusError(
        f"{root} contains no text files (hidden, binary and non-UTF-8 files and run directories are skipped); "
        "point at a directory of UTF-8 text files."
    )


def check_directories(resolved: list[Resolved], accepted: list[Input]) -> None:
    """Refuse a directory whose every candidate file turned out not to be UTF-8 text."""
    kept = set(accepted)
    for r in resolved:
        if r.inputs[0].skippable and not kept.intersection(r.inputs):
            raise _no_text_files(r.source)


def _named_path(name: str, cache_dir: Path) -> Path:
    """The text of a named corpus: a built-in one is built here, a downloaded one must have been fetched already."""
    if corpora.REGISTRY[name].builtin:
        return corpora.build(name, cache_dir)
    return corpora.path(name, cache_dir)  # not downloaded yet: one sentence saying to run `charrnn corpus get NAME`

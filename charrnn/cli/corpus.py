"""`charrnn corpus list|get|path`: the named corpora.

The library is imported inside each command, lazily, for start-up speed (`charrnn --help` reads no registry).
"""

from __future__ import annotations

from typing import Annotated

import typer

from charrnn.cli.console import err, reader_may_leave, write_out
from charrnn.cli.signals import user_errors

corpus_app = typer.Typer(
    no_args_is_help=True,
    help="The named corpora: list them, download one, print its path.",
    epilog="Examples:\n\n  charrnn corpus list\n\n"
    "  charrnn corpus get tiny-shakespeare && charrnn train tiny-shakespeare",
)
CorpusName = Annotated[str, typer.Argument(metavar="NAME", help="A corpus name from `charrnn corpus list`.")]


@corpus_app.command("list", epilog="Examples:\n\n  charrnn corpus list")
def corpus_list() -> None:
    """The known corpora: size, whether downloaded, licence and what they are (tab-separated on stdout)."""
    from charrnn.text.corpora import list_corpora

    with user_errors(), reader_may_leave():
        for status in list_corpora():
            c = status.corpus
            size = "built in" if c.url is None else f"{(c.text_size or c.size or 0) / 1e6:.1f} MB"
            here = "downloaded" if status.present else "-"
            write_out(f"{c.name}\t{size}\t{here}\t{c.licence}\t{c.description}\n")


@corpus_app.command("get", epilog="Examples:\n\n  charrnn corpus get enwik8")
def corpus_get(name: CorpusName) -> None:
    """Download a named corpus into the cache (resuming a broken download, checking its SHA-256, unpacking
    archives) and print its path."""
    from charrnn.text import corpora, download
    from charrnn.training.progress import Reporter

    with user_errors(), reader_may_leave():
        corpora.lookup(name)
        reporter = Reporter(console=err)
        with reporter.transfer(f"downloading {name}") as progress:
            path = download.get(name, progress=progress, warn=reporter.warn)
        write_out(f"{path}\n")


@corpus_app.command("path", epilog="Examples:\n\n  wc -c $(charrnn corpus path tiny-shakespeare)")
def corpus_path(name: CorpusName) -> None:
    """Print the path of a downloaded corpus's text file (for pipelines)."""
    from charrnn.text import corpora

    with user_errors(), reader_may_leave():
        write_out(f"{corpora.path(name)}\n")

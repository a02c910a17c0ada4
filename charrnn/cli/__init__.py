"""The command line: Typer commands over charrnn.api and the stages below it; the only package that prints or
exits."""

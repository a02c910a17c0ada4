"""`python -m charrnn`: the same entry point as the `charrnn` command."""

from charrnn.cli.app import main

main()

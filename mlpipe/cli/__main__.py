"""`python -m mlpipe.cli`."""

from mlpipe.cli import main

main()

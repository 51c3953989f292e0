"""`python -m adapters.cli`: the same as the `saga` console script."""

from adapters.cli.app import main

main()

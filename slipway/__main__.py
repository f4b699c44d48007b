"""`python -m slipway` runs the CLI."""

from slipway.entry import main

main()

"""The `saga` command line: `app.py` assembles the commands, one module per group of them;
`support.py` holds what they share and `api.py` the client of the HTTP API for `--url`."""

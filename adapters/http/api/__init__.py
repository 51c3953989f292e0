"""The JSON API under /api: list, read, start, cancel and every operator action
(docs/http-api.md). Reads go to the store (`reads`); writes go through the engine like any
other transition (row lock, history with who and why, outbox), so an action taken here is the
same as one taken with the CLI or sent through the broker (`writes`). `context` holds what
both share."""

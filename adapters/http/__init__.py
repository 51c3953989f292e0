"""The HTTP API, the dashboard and the observability endpoints of `saga run`.

The API contract both sides are built against is in docs/http-api.md (section "HTTP API
contract"); the brief's {CONTRACT} placeholder means that section.
"""

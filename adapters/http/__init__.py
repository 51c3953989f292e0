"""The HTTP API, the dashboard and the observability endpoints of `saga run`.

The contract the API serves and the dashboard's JavaScript relies on is in docs/http-api.md;
docs/openapi.json is generated from `app.create_app` (`saga openapi`).
"""

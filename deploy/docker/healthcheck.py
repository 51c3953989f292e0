#!/usr/bin/env python3
"""Container health check of `saga run`: GET a probe path on the port of SAGA_HTTP_BIND.

Usage: saga-healthcheck [PATH]   (default /healthz; /readyz also checks Postgres and RabbitMQ)

Standard library only, so it needs nothing the image lacks (no curl in a slim image). A bind
on every address (0.0.0.0, ::) is asked on loopback. Exit 0 when the answer is 200, else 1.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_BIND = "127.0.0.1:8080"  # adapters/settings.py: Settings.http_bind
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def probe_url(bind: str, path: str) -> str:
    """The URL that reaches the server bound on `bind` from inside its own container."""
    host, _, port = bind.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    host = WILDCARDS.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    bind = os.environ.get("SAGA_HTTP_BIND", DEFAULT_BIND)
    if not bind.strip():
        print("SAGA_HTTP_BIND is empty: this process serves no HTTP to check", file=sys.stderr)
        return 1
    url = probe_url(bind, path)
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

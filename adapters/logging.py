"""structlog setup: JSON lines in production, pretty output on a terminal.

Every line passes `redact_secrets` last before rendering: URL passwords, bearer tokens and
fields named like a secret (adapters/redaction.py) never reach the output, whether a line
names them on purpose, quotes them in an error message or carries them in a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from adapters.redaction import redact


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The structlog processor: every field, at any depth, with its secrets masked."""
    return {key: redact(value, key) for key, value in event_dict.items()}


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks become text (or dicts) here, so the redaction sees them: the console
            # renderer's own pretty tracebacks would print exception messages unredacted.
            structlog.processors.dict_tracebacks
            if use_json
            else structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )

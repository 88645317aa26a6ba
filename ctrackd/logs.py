"""Logging setup: structlog, a console renderer on a terminal, JSON lines otherwise.

Under systemd stdout is journald, where one JSON object per line is what
log shippers want; over SSH in a terminal the admin wants colours and
aligned keys. Caller numbers are personal data: they are masked at info
level unless the config's `log.show_numbers` says otherwise.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from ctrackd.attribution.numbers import masked

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}

_show_numbers = False


def configure_logging(level: str = "info", fmt: str = "auto", *, show_numbers: bool = False,
                      stream: TextIO | None = None) -> None:
    """Configure structlog once for the process (the daemon or a CLI command)."""
    global _show_numbers
    _show_numbers = show_numbers
    out = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=out.isatty()) if console
                     else structlog.processors.JSONRenderer(ensure_ascii=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def mask_number(number: str | None) -> str | None:
    """`+79161234567` -> `+7916***4567` unless the admin asked for full numbers."""
    if number is None or _show_numbers:
        return number
    return masked(number)

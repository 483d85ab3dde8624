"""The id of the request being served, for log lines and error bodies.

The gateway's admission middleware sets it for each request (and sends it back as
``x-request-id``); tasks started while serving the request inherit it. An operator finds
everything logged about a failed request by the id its client was given.
"""

from __future__ import annotations

import os
from contextvars import ContextVar

#: The current request's id; None outside a request.
REQUEST_ID: ContextVar[str | None] = ContextVar("coe_request_id", default=None)


def new_request_id() -> str:
    """A fresh id: 16 random hex digits (short enough to read out, unique enough to grep)."""
    return os.urandom(8).hex()


def current_request_id() -> str | None:
    """The id of the request being served, if any."""
    return REQUEST_ID.get()

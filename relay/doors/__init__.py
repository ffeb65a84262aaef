"""The doors through which traffic enters and leaves the instance (see DESIGN.md).

A door is a route set: ``routes()`` returns aiohttp route definitions whose handlers
are the door's own methods, and a listener mounts them in order. The public listener
mounts the admin door's ``public_routes()`` (``/healthz``), the upload door (pict-rs's
validation hook and the upload APIs), the inbound door (``POST`` on any path: it
checks what is an inbox POST and hands any other POST to the passthrough) and the
passthrough (any method, any path). The admin door is a sub-app of its own
(``AdminDoor.app()``) on the admin listener, its API behind an authentication
middleware.

An activity door decides nothing and stores nothing itself: what it accepts goes
through ``Flow.accept``, the only way in, and it answers with what that returns. The
upload door cannot hold what it is given (the uploader waits for the answer): it
judges each file at once on the same path as the hold, ``Inspector.inspect`` then the
hold's ``Policy``, and keeps evidence and effects as a verdict does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

__all__ = ["Door", "Handler"]

#: What aiohttp calls for a request; a door may hand a request it does not take to one.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Door(Protocol):
    """What a listener mounts of a door."""

    def routes(self) -> list[web.RouteDef]: ...

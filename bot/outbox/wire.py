"""The moment a send reaches the wire, told by the sender's HTTP client to the dispatcher.

Pacing counts the starts of platform calls, and the platform counts their arrivals. Between the
dispatcher's decision and the request's first bytes on the socket lie the sender's own work and
every task the event loop runs meanwhile: on a loaded machine tens of milliseconds, which vary
from call to call, while the limit's margin is 3 % (31 ms in a second). Measured at the platform,
a send that left 40 ms late put 31 calls into one second and two into one chat 0.94 s apart. So
a sender's HTTP client calls `on_the_wire()` as it writes the request, and the dispatcher
counts the call from then (`marking`). A sender that does not tell is counted from when the
dispatcher started it, as before.

A context variable carries the callback: each send runs in a task of its own, and the HTTP
client's hooks run inside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

_mark: ContextVar[Callable[[], None] | None] = ContextVar("outbox_on_the_wire", default=None)


@contextlib.contextmanager
def marking(callback: Callable[[], None]) -> Iterator[None]:
    """Within this block (one send), `on_the_wire()` calls `callback`."""
    token = _mark.set(callback)
    try:
        yield
    finally:
        _mark.reset(token)


def on_the_wire() -> None:
    """Called by a sender's HTTP client when it writes a request to the platform."""
    callback = _mark.get()
    if callback is not None:
        callback()

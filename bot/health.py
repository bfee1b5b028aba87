"""The state of each chat channel, as `/healthz` and `/metrics` report it.

A channel is `starting` until its first attempt to reach its platform ends, `ok` once it is
up, and `unreachable` while attempts fail (it keeps retrying). Parts that depend on a channel
(the outbox dispatcher) listen for changes instead of polling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from prometheus_client import Gauge

log = logging.getLogger(__name__)

ChannelState = Literal["ok", "starting", "unreachable"]
CHANNEL_STATES: tuple[ChannelState, ...] = ("ok", "starting", "unreachable")

CHANNEL_STATE = Gauge(
    "sipas_channel_state",
    "1 for the state each configured chat channel is in (ok, starting, unreachable), else 0",
    ["channel", "state"],
)

Listener = Callable[[str, ChannelState], None]


class ChannelStates:
    """Channel name to state, mirrored into the `sipas_channel_state` gauge."""

    def __init__(self) -> None:
        self._states: dict[str, ChannelState] = {}
        self._listeners: list[Listener] = []

    def set(self, channel: str, state: ChannelState) -> None:
        previous = self._states.get(channel)
        self._states[channel] = state
        for name in CHANNEL_STATES:
            CHANNEL_STATE.labels(channel, name).set(1 if name == state else 0)
        if previous != state:
            for listener in list(self._listeners):
                listener(channel, state)

    def get(self, channel: str) -> ChannelState | None:
        return self._states.get(channel)

    def up(self) -> list[str]:
        return [name for name, state in self._states.items() if state == "ok"]

    def as_dict(self) -> dict[str, ChannelState]:
        return dict(self._states)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Calls `listener(channel, state)` on every change; returns how to stop listening."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

"""What a channel's sender promises the dispatcher: the `Sender` protocol and the one family
of errors it raises, each saying what to do next (retry later, stop writing, give up)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class SendError(Exception):
    """A platform refused or failed to take a message; the subclass says what to do next."""


class RetryAfter(SendError):
    """The platform's rate limit (HTTP 429): try this address again after `seconds`."""

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"rate limited, retry after {seconds:g}s")
        self.seconds = max(0.0, float(seconds))


class Unreachable(SendError):
    """The recipient blocked the bot or no longer exists: stop writing to them."""


class TransientSendError(SendError):
    """Network trouble, a timeout or a 5xx: the same message may go through later."""


class PermanentSendError(SendError):
    """The platform rejected this message itself (400): sending it again cannot help."""


class Sender(Protocol):
    """One channel's way to deliver a payload; it raises the `SendError` family, nothing else.

    `clear_buttons_of` is the platform id of an earlier message whose inline keyboard goes
    away before this one is sent (or, with `payload["edit"]`, the message whose text is
    replaced). Returns the platform's id of the message it produced.
    """

    channel: str

    async def send(
        self, address: str, payload: Mapping[str, Any], *, clear_buttons_of: str | None
    ) -> str | None: ...


def describe(error: BaseException) -> str:
    """Class and platform description of an error, for `last_error` and logs (no payload)."""
    text = str(error)
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__

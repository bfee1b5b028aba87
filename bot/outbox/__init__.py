"""The outbox: every outgoing message is a row, sent by one dispatcher within the platforms'
limits (`dispatcher`), by one process per bot (`leadership`), at a paced rate (`pacing`),
through a channel's `Sender` and its errors (`errors`)."""

from __future__ import annotations

from bot.outbox.dispatcher import FAILED, RETRIES, SEND_SECONDS, SENT, Dispatcher
from bot.outbox.errors import (
    PermanentSendError,
    RetryAfter,
    Sender,
    SendError,
    TransientSendError,
    Unreachable,
    describe,
)
from bot.outbox.held import mask_address
from bot.outbox.leadership import (
    LEADER,
    AdvisoryLockLeadership,
    Leadership,
    SoleSender,
    leadership_for,
)
from bot.outbox.pacing import Pace, PacingClock, SystemPacingClock, global_pace

__all__ = [
    "FAILED",
    "LEADER",
    "RETRIES",
    "SEND_SECONDS",
    "SENT",
    "AdvisoryLockLeadership",
    "Dispatcher",
    "Leadership",
    "Pace",
    "PacingClock",
    "PermanentSendError",
    "RetryAfter",
    "SendError",
    "Sender",
    "SoleSender",
    "SystemPacingClock",
    "TransientSendError",
    "Unreachable",
    "describe",
    "global_pace",
    "leadership_for",
    "mask_address",
]

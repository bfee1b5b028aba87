"""A channel may have sending limits of its own (Zalo's conservative defaults), beside the
bot-wide and per-chat limits every other channel shares."""

from __future__ import annotations

import itertools
import random

from bot.outbox import Dispatcher
from handlers.clock import FakeClock
from storage.db import SessionFactory
from storage.repositories import outbox
from tests.test_outbox import FakeSender


async def test_zalo_is_spaced_by_its_own_per_chat_rate(
    sessions: SessionFactory, clock: FakeClock
) -> None:
    telegram, zalo = FakeSender(channel="telegram"), FakeSender(channel="zalo")
    async with sessions.begin() as session:
        for channel in ("telegram", "zalo"):
            for i in range(3):
                await outbox.enqueue(
                    session,
                    channel=channel,
                    address="4001",
                    payload={"text": f"{channel} {i}"},
                    not_before=clock.now(),
                )
    dispatcher = Dispatcher(
        sessions,
        {"telegram": telegram, "zalo": zalo},
        clock,
        global_rate=200.0,
        per_chat_rate=50.0,
        channel_rates={"zalo": (200.0, 2.0)},
        rng=random.Random(7),
    )
    assert await dispatcher.drain(6) == 6
    assert zalo.texts() == ["zalo 0", "zalo 1", "zalo 2"]
    times = [d.at for d in zalo.deliveries]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.5 - 0.01 for gap in gaps), gaps  # 2 a second, not Telegram's 50

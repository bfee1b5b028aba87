"""Several processes on one database: start-up together on an empty database, and `serve`
processes behind a TLS load balancer sharing one bot's limits (the outbox's elected sender)
while updates come in through the webhook."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from handlers.texts import t
from storage.migrate import current_revision, upgrade
from tests.conftest import engine_for
from tests.fakes.telegram_api import FakeTelegramAPI, SentCall
from tests.multiprocess_support import (
    FIRST_CHAT,
    WEBHOOK_SECRET,
    answered_presses,
    arrival,
    closest_in_a_chat,
    deliver_update,
    deploy,
    invitations,
    is_question,
    load_units,
    message_calls,
    most_in_a_window,
    per_chat_most,
    post_cases,
    press_first_button,
)
from tests.threaded import in_a_thread


async def test_concurrent_upgrades_on_an_empty_database_serialise(database_url: str) -> None:
    """`serve` processes started together all upgrade at once; every one must succeed."""
    engines = [engine_for(database_url) for _ in range(4)]
    try:
        async with asyncio.timeout(60):  # unserialised, they deadlock or fail
            await asyncio.gather(*(upgrade(engine) for engine in engines))
        revisions = {await current_revision(engine) for engine in engines}
    finally:
        for engine in engines:
            await engine.dispose()
    assert len(revisions) == 1
    assert None not in revisions


@pytest.fixture
def steady_stamps() -> Iterator[None]:
    """No garbage collection in this process while the fake platform stamps arrivals: after a
    thousand tests its heap is large, and a full collection stalls the event loop that stamps
    them long enough to put two messages sent a spacing apart within a second of each other
    (benchmarks/multiprocess_bench.py saw 50-80 ms with a much smaller heap)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.slow
async def test_serve_processes_share_one_bot_across_a_kill(
    database_url: str, tmp_path: Path, steady_stamps: None
) -> None:
    """Three `serve` on an empty PostgreSQL, started together behind a TLS balancer; cases
    posted through it; citizens press "Bắt đầu" on their invitations through the webhook,
    before and after the elected sender is killed with SIGKILL mid-backlog. Every invitation
    arrives, once (but for those in flight at the kill: the documented at-least-once window),
    every press is answered, and the platform never sees more than the bot's limit in a
    second, nor two messages to a chat in one, edits included."""
    if not database_url.startswith("postgresql"):
        pytest.skip("several processes share PostgreSQL; SQLite is one process")
    cases = 40
    presses = 10
    statuses: list[list[int]] = []
    async with (
        in_a_thread(FakeTelegramAPI(), "fake-bot-api") as api,
        deploy(
            3, database_url, api, tmp_path, send_rate_global="10", send_rate_per_chat="1"
        ) as deployment,
    ):
        await load_units(database_url)
        await post_cases(deployment, range(cases))
        async with asyncio.timeout(60), deployment.client() as client:

            async def press(chats: list[int]) -> None:
                # One at a time, as the round-robin turn then visits every process.
                for chat in chats:
                    update = press_first_button(api, invitations(api)[chat][0])
                    statuses.append(await deliver_update(client, api, update))

            await api.wait_until(lambda: len(invitations(api)) >= presses, 40)
            pressed = sorted(invitations(api))[:presses]
            await press(pressed[: presses // 2])
            leaders = [s for s in deployment.serves if await s.is_leader(client)]
            assert len(leaders) == 1, "exactly one elected sender"
            leaders[0].kill()
            killed_at = time.monotonic()
            await leaders[0].process.wait()  # its port refuses connections from now on
            await press(pressed[presses // 2 :])
            await api.wait_until(
                lambda: len(invitations(api)) >= cases and answered_presses(api) >= set(pressed),
                40,
            )
            await asyncio.sleep(1.5)  # room for a duplicate to show, were there one
        balancer = deployment.balancer

    assert api.webhook is not None
    assert api.webhook["url"] == f"{balancer.url}/telegram/webhook"
    assert api.webhook["url"].startswith("https://127.0.0.1:")
    assert api.webhook["secret_token"] == WEBHOOK_SECRET
    assert statuses == [[200]] * presses
    # After the kill the turn came to the dead process; the balancer moved on to the next.
    assert balancer.refused >= 1

    received = invitations(api)
    assert sorted(received) == [FIRST_CHAT + n for n in range(cases)]
    questions = {
        chat: [call for call in api.calls("sendMessage", chat) if is_question(call)]
        for chat in pressed
    }
    for calls in [*received.values(), *questions.values()]:
        assert_once_but_at_the_kill(calls, killed_at)
    duplicates = sum(len(calls) - 1 for calls in [*received.values(), *questions.values()])
    assert duplicates <= 2  # the sends in flight at the kill, at most

    start = t("choice.start", "vi")
    for chat in pressed:
        invitation = received[chat][0]
        assert invitation.message_id is not None
        # The press answered at once (a notice, not a message)...
        assert len(api.calls("answerCallbackQuery", chat)) == 1
        # ...the pressed invitation edited through the outbox: the choice appended, no buttons
        # (a repeat in flight at the kill meets "not modified" and leaves no second edit)...
        (edit,) = api.calls("editMessageText", chat)
        assert edit.message_id == invitation.message_id
        assert edit.text == f"{invitation.text}\n\n✔ {start}"
        shown = api.message_state(chat, invitation.message_id)
        assert shown is not None and "reply_markup" not in shown
        # ...and the first question sent as a new message of its own.
        assert questions[chat][0].timestamp > invitation.timestamp
    unpressed = set(received) - set(pressed)
    assert not any(api.calls("editMessageText", chat) for chat in unpressed)

    calls = message_calls(api)
    assert {call.method for call in calls} == {"sendMessage", "editMessageText"}
    assert len(calls) >= cases + 2 * presses
    assert most_in_a_window(arrival(call) for call in calls) <= 10
    assert per_chat_most(calls) == 1, closest_in_a_chat(calls)


def assert_once_but_at_the_kill(calls: list[SentCall], killed_at: float) -> None:
    """The same message twice only when the first was accepted by the platform, not yet
    marked sent, when its sender was killed."""
    texts = [call.text for call in calls]
    if len(texts) != len(set(texts)):
        # Written to the platform before the kill, read by it a moment after at the latest.
        first = arrival(calls[0])
        assert killed_at - 0.5 <= first <= killed_at + 0.25, texts

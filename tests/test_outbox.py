"""The outbox dispatcher against a scripted in-memory sender, on SQLite and PostgreSQL.

Timing assertions use a small rate (tens of messages a second) and tolerances, and look at
the monotonic timestamps the fake sender records when a send starts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert, select
from sqlalchemy.exc import OperationalError

from bot.outbox import (
    AdvisoryLockLeadership,
    Dispatcher,
    PermanentSendError,
    RetryAfter,
    SoleSender,
    TransientSendError,
    Unreachable,
    global_pace,
    mask_address,
)
from bot.outbox.wire import on_the_wire
from handlers.clock import FakeClock
from storage.db import SessionFactory, create_session_factory
from storage.models import (
    Case,
    Citizen,
    CitizenContact,
    ContactStatus,
    OutboxMessage,
    OutboxStatus,
    Priority,
    Procedure,
    Survey,
    SurveyStatus,
    Unit,
)
from storage.repositories import outbox
from tests.conftest import engine_for

CHANNEL = "telegram"
T = TypeVar("T")


@dataclass
class Delivery:
    address: str
    text: str
    at: float
    clear_buttons_of: str | None


class FakePacing:
    """The dispatcher's monotonic clock, moved by the test (`advance`, or `run` in steps).

    What the dispatcher decides depends on this clock only, and the fake sender stamps each
    send with it, so the limits the tests check hold however loaded the machine is: a send is
    stamped at most one step after the moment the dispatcher paced it for.
    """

    STEP = 0.005

    def __init__(self) -> None:
        self.now = 1000.0
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.now

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        if event.is_set() or seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, future)
        self._waiters.append(entry)
        setter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([future, setter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            setter.cancel()
            if entry in self._waiters:
                self._waiters.remove(entry)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, future in list(self._waiters):
            if deadline <= self.now and not future.done():
                future.set_result(None)

    async def run(self, until: Callable[[], bool], *, limit: float = 120.0) -> None:
        """Moves time in small steps, letting the loop run between them, until `until()`.

        Fails after `limit` seconds of fake time (and a real-time deadline of the caller's).
        """
        start = self.now
        while not until():
            assert self.now - start < limit, "fake time ran out"
            self.advance(self.STEP)
            await asyncio.sleep(0.001)  # real time for the database to answer

    async def complete(self, coroutine: Awaitable[T]) -> T:
        """Runs `coroutine` (e.g. `drain()`) while moving time, and returns its result."""
        task = asyncio.ensure_future(coroutine)
        await self.run(task.done)
        return task.result()


@dataclass
class FakeSender:
    """Records every send with its monotonic start time; raises what a test scripted."""

    channel: str = CHANNEL
    latency: float = 0.0
    clock: Callable[[], float] = time.monotonic
    deliveries: list[Delivery] = field(default_factory=list)
    attempts: list[Delivery] = field(default_factory=list)
    script: dict[str, list[BaseException]] = field(default_factory=dict)
    always: dict[str, BaseException] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def fail(self, address: str, *errors: BaseException) -> None:
        self.script.setdefault(address, []).extend(errors)

    async def send(
        self, address: str, payload: Mapping[str, Any], *, clear_buttons_of: str | None
    ) -> str | None:
        delivery = Delivery(address, str(payload["text"]), self.clock(), clear_buttons_of)
        self.attempts.append(delivery)
        self.changed.set()
        if self.latency:
            await asyncio.sleep(self.latency)
        if address in self.always:
            raise self.always[address]
        queued = self.script.get(address)
        if queued:
            raise queued.pop(0)
        self.deliveries.append(delivery)
        self.changed.set()
        return f"m{len(self.deliveries)}"

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Waits for `condition`, re-checked on each send attempt (callers put a deadline
        around it with `asyncio.timeout`)."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    def texts(self, address: str | None = None) -> list[str]:
        return [d.text for d in self.deliveries if address is None or d.address == address]


@pytest.fixture
def sender() -> FakeSender:
    return FakeSender()


def make_dispatcher(
    sessions: SessionFactory, sender: FakeSender, clock: FakeClock, **options: Any
) -> Dispatcher:
    options.setdefault("global_rate", 200.0)
    options.setdefault("per_chat_rate", 50.0)
    options.setdefault("rng", random.Random(7))
    return Dispatcher(sessions, {CHANNEL: sender}, clock, **options)


async def put(
    sessions: SessionFactory,
    clock: FakeClock,
    address: str,
    text: str,
    *,
    priority: int = Priority.NOTICE,
    **options: Any,
) -> int:
    async with sessions.begin() as session:
        row = await outbox.enqueue(
            session,
            channel=CHANNEL,
            address=address,
            payload={"text": text, **options.pop("payload", {})},
            priority=priority,
            not_before=clock.now(),
            **options,
        )
        assert row is not None
        return row.id


async def row(sessions: SessionFactory, row_id: int) -> OutboxMessage:
    async with sessions() as session:
        found = await session.get(OutboxMessage, row_id)
        assert found is not None
        return found


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_sends_due_messages_and_records_them(
    sessions: SessionFactory, sender: FakeSender, clock: FakeClock
) -> None:
    first = await put(sessions, clock, "1001", "a")
    second = await put(sessions, clock, "1002", "b")
    later = await put(sessions, clock, "1003", "c")
    async with sessions.begin() as session:
        stored = await session.get(OutboxMessage, later)
        assert stored is not None
        stored.not_before = clock.now() + timedelta(hours=1)
    sent_before = metric("sipas_outbox_sent_total", channel=CHANNEL)

    dispatcher = make_dispatcher(sessions, sender, clock)
    assert await dispatcher.drain(2) == 2

    assert sorted(sender.texts()) == ["a", "b"]
    for row_id in (first, second):
        sent = await row(sessions, row_id)
        assert sent.status == OutboxStatus.SENT
        assert sent.sent_at == clock.now()
        assert sent.platform_message_id in {"m1", "m2"}
        assert sent.claimed_until is None
        assert sent.attempts == 1
    assert (await row(sessions, later)).status == OutboxStatus.PENDING
    assert metric("sipas_outbox_sent_total", channel=CHANNEL) == sent_before + 2
    async with sessions() as session:
        assert await outbox.pending_count(session) == 1

    clock.advance(timedelta(hours=1))
    assert await dispatcher.run_once() == 1
    assert sender.texts()[-1] == "c"


def most_in_a_window(times: list[float], window: float = 1.0) -> int:
    """The most of `times` that fall in any half-open window [t, t + window)."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, moment in enumerate(ordered):
        while ordered[first] <= moment - window:
            first += 1
        most = max(most, last - first + 1)
    return most


@pytest.fixture
def pacing() -> FakePacing:
    return FakePacing()


async def test_global_rate_is_held(
    sessions: SessionFactory, clock: FakeClock, pacing: FakePacing
) -> None:
    sender = FakeSender(clock=pacing.monotonic)
    for i in range(40):
        await put(sessions, clock, f"20{i:02d}", f"n{i}")
    dispatcher = make_dispatcher(sessions, sender, clock, global_rate=10.0, pacing=pacing)

    assert await pacing.complete(dispatcher.drain(30)) == 40

    times = [d.at for d in sender.deliveries]
    # Never one more in any second (a token bucket lets burst + rate into one), ...
    assert most_in_a_window(times) == 10
    # ... spread out rather than bunched at the start of a window, ...
    assert min(b - a for a, b in itertools.pairwise(sorted(times))) >= 1.03 / 10 / 2 - 0.001
    # ... and at the rate, less the 3 % margin: 4 windows of 1.03 s for 40.
    assert max(times) - min(times) <= 3 * 1.03 + 1.0


def test_a_send_that_starts_late_is_counted_when_it_starts() -> None:
    """A busy event loop between the decision and the send must not let the next window
    take a full share on top of it."""
    pace = global_pace(2.0, 0.0)  # 2 in any second, at least 0.25 s apart
    pace.take(0.0)
    pace.take(0.3)
    assert pace.ready_at(0.5) == 1.0
    pace.started_late(0.0, 0.45)  # the first only went out at 0.45
    assert pace.ready_at(0.5) == 1.3
    assert pace.ready_at(1.3) == 1.3


async def test_pace_counts_starts_in_a_sliding_window() -> None:
    pace = global_pace(30.0, 0.0)
    taken = []
    now = 0.0
    while now < 10.0:
        at = pace.ready_at(now)
        if at <= now:
            pace.take(now)
            taken.append(now)
        now += 0.001
    assert most_in_a_window(taken) == 30
    assert len(taken) >= 30 * 10 - 1  # and no slower than the limit


def test_pace_spreads_a_backlog_evenly_and_keeps_its_rate_when_starts_are_late() -> None:
    """A backlog at 30 a second (3 % margin) goes out one start every 34 ms, not 30 in the
    first half of each window and none in the second (a fresh row then waited 0.46 s); a
    start made up to a few ms late by a busy event loop does not slow the rate."""
    pace = global_pace(30.0, 0.03)
    late = random.Random(11)
    taken: list[float] = []
    now = 0.0
    while now < 20.0:
        now = pace.ready_at(now) + late.uniform(0.0, 0.008)  # the loop wakes a bit late
        pace.take(now)
        taken.append(now)
    gaps = [b - a for a, b in itertools.pairwise(taken)]
    assert most_in_a_window(taken, 1.03) <= 30
    assert max(gaps) < 0.1  # no pause of half a window: the next turn is always near
    assert len([t for t in taken if t < 20.0]) >= 0.995 * 20 * 30 / 1.03  # 29.1 a second


async def test_per_chat_spacing_and_order(
    sessions: SessionFactory, clock: FakeClock, pacing: FakePacing
) -> None:
    sender = FakeSender(clock=pacing.monotonic)
    await put(sessions, clock, "3001", "notice 1")
    await put(sessions, clock, "3001", "notice 2")
    await put(sessions, clock, "3001", "invitation", priority=Priority.INVITATION)
    await put(sessions, clock, "3001", "reply", priority=Priority.REPLY)
    await put(sessions, clock, "3001", "notice 3")
    await put(sessions, clock, "3002", "other chat")
    dispatcher = make_dispatcher(
        sessions, sender, clock, global_rate=50.0, per_chat_rate=2.0, pacing=pacing
    )

    assert await pacing.complete(dispatcher.drain(30)) == 6

    assert sender.texts("3001") == ["reply", "notice 1", "notice 2", "notice 3", "invitation"]
    times = [d.at for d in sender.deliveries if d.address == "3001"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Half a second, widened by the 3 % pacing margin; a stamp is at most one step late.
    assert all(gap >= 0.5 * 1.03 - FakePacing.STEP for gap in gaps), gaps
    # The other chat is not held back by the first one's spacing.
    other = next(d.at for d in sender.deliveries if d.address == "3002")
    assert other - times[0] < 0.5


async def test_one_send_in_flight_per_chat(sessions: SessionFactory, clock: FakeClock) -> None:
    slow = FakeSender(latency=0.15)
    for i in range(3):
        await put(sessions, clock, "3101", f"m{i}")
    dispatcher = make_dispatcher(sessions, slow, clock, per_chat_rate=100.0)

    assert await dispatcher.drain(3) == 3

    times = [d.at for d in slow.deliveries]
    assert slow.texts() == ["m0", "m1", "m2"]
    assert all(b - a >= 0.15 - 0.01 for a, b in itertools.pairwise(times))


async def test_reply_overtakes_a_backlog_of_invitations(
    sessions: SessionFactory,
    sender: FakeSender,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    claims: list[set[str]] = []  # the texts of each claim, in order
    claim_due = outbox.claim_due

    async def noting(*args: Any, **kwargs: Any) -> outbox.Claim:
        claim = await claim_due(*args, **kwargs)
        claims.append({str(row.payload["text"]) for row in claim.messages})
        return claim

    monkeypatch.setattr(outbox, "claim_due", noting)
    async with sessions.begin() as session:
        await session.execute(
            insert(OutboxMessage),
            [
                {
                    "channel": CHANNEL,
                    "address": str(100_000 + i),
                    "priority": Priority.INVITATION,
                    "payload": {"text": f"invitation {i}"},
                    "status": OutboxStatus.PENDING,
                    "attempts": 0,
                    "not_before": clock.now(),
                }
                for i in range(10_000)
            ],
        )
    dispatcher = make_dispatcher(sessions, sender, clock, global_rate=50.0, idle_interval=5.0)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    try:
        async with asyncio.timeout(2):
            await sender.wait_until(lambda: len(sender.deliveries) >= 10)
        await put(sessions, clock, "42", "next question", priority=Priority.REPLY)
        enqueued_at = time.monotonic()
        invitations_before = len(sender.deliveries)
        dispatcher.wake()
        async with asyncio.timeout(2.0):
            await sender.wait_until(lambda: "next question" in sender.texts())
    finally:
        stop.set()
        await running

    reply = next(d for d in sender.deliveries if d.text == "next question")
    # What counts: no invitation claimed after the reply goes before it. Those held when it
    # was enqueued keep their turns while its claim runs (at 50/s, one every 20 ms of it).
    with_reply = next(i for i, texts in enumerate(claims) if "next question" in texts)
    claimed_later = set().union(*claims[with_reply + 1 :])
    before_reply = sender.deliveries[invitations_before : sender.deliveries.index(reply)]
    assert not claimed_later & {d.text for d in before_reply}
    # One claim (a bounded query, not a sort of the backlog) and at most one token's wait;
    # the bound is loose because CI machines are loaded (typically 70-150 ms here).
    assert reply.at - enqueued_at < 1.0
    async with sessions() as session:
        claimed = await session.scalar(
            select(OutboxMessage.id).where(OutboxMessage.claimed_until.is_not(None)).limit(1)
        )
    assert claimed is None, "a clean stop gives held rows back"


async def test_rate_limit_delays_only_that_chat(
    sessions: SessionFactory, sender: FakeSender, clock: FakeClock
) -> None:
    limited = await put(sessions, clock, "4001", "limited")
    behind = await put(sessions, clock, "4001", "behind it")
    await put(sessions, clock, "4002", "free")
    await put(sessions, clock, "4003", "free too")
    sender.fail("4001", RetryAfter(5))
    retries_before = metric("sipas_outbox_retries_total", channel=CHANNEL, reason="rate_limited")
    dispatcher = make_dispatcher(sessions, sender, clock)

    assert await dispatcher.drain(2) == 2
    assert sorted(sender.texts()) == ["free", "free too"]
    waiting = await row(sessions, limited)
    assert waiting.status == OutboxStatus.PENDING
    assert waiting.not_before == clock.now() + timedelta(seconds=5)
    assert waiting.attempts == 0  # a rate limit is not the message's fault
    assert (
        metric("sipas_outbox_retries_total", channel=CHANNEL, reason="rate_limited")
        == retries_before + 1
    )

    clock.advance(timedelta(seconds=4))
    assert await dispatcher.drain(2) == 0  # the second message does not overtake the first
    clock.advance(timedelta(seconds=1))
    assert await dispatcher.drain(2) == 2
    assert sender.texts("4001") == ["limited", "behind it"]
    assert (await row(sessions, behind)).status == OutboxStatus.SENT


async def test_flood_on_several_chats_pauses_the_channel(
    sessions: SessionFactory, sender: FakeSender, clock: FakeClock
) -> None:
    for address in ("5001", "5002", "5003", "5004"):
        await put(sessions, clock, address, f"to {address}")
    for address in ("5001", "5002", "5003"):
        sender.fail(address, RetryAfter(0.3))
    # 50 ms between sends: time for the third refusal to be seen before the fourth starts.
    dispatcher = make_dispatcher(sessions, sender, clock, global_rate=20.0)

    assert await dispatcher.drain(3) == 1

    third_refused = sender.attempts[2].at
    fourth = next(d for d in sender.deliveries if d.address == "5004")
    assert fourth.at - third_refused >= 0.3 - 0.02


async def test_transient_errors_retry_with_backoff(
    sessions: SessionFactory, sender: FakeSender, clock: FakeClock
) -> None:
    message = await put(sessions, clock, "6001", "hello")
    sender.fail("6001", TransientSendError("502 Bad Gateway"), TransientSendError("timed out"))
    dispatcher = make_dispatcher(sessions, sender, clock)
    start = clock.now()

    assert await dispatcher.drain(2) == 0
    first = await row(sessions, message)
    assert first.attempts == 1
    assert first.last_error is not None
    assert "502" in first.last_error
    assert start + timedelta(seconds=2) <= first.not_before <= start + timedelta(seconds=4)

    clock.set(first.not_before - timedelta(milliseconds=1))
    assert await dispatcher.drain(2) == 0
    assert len(sender.attempts) == 1  # not due yet

    clock.set(first.not_before)
    assert await dispatcher.drain(2) == 0
    second = await row(sessions, message)
    assert second.attempts == 2
    assert clock.now() + timedelta(seconds=4) <= second.not_before
    assert second.not_before <= clock.now() + timedelta(seconds=8)

    clock.set(second.not_before)
    assert await dispatcher.drain(2) == 1
    assert (await row(sessions, message)).status == OutboxStatus.SENT


async def test_gives_up_after_max_attempts(
    sessions: SessionFactory, sender: FakeSender, clock: FakeClock
) -> None:
    message = await put(sessions, clock, "6101", "hello")
    sender.always["6101"] = TransientSendError("Internal Server Error")
    failed_before = metric("sipas_outbox_failed_total", channel=CHANNEL, reason="attempts")
    dispatcher = make_dispatcher(
        sessions, sender, clock, max_attempts=3, backoff_max=timedelta(seconds=10)
    )

    for _ in range(5):
        await dispatcher.drain(2)
        clock.advance(timedelta(seconds=10))

    gone = await row(sessions, message)
    assert gone.status == OutboxStatus.FAILED
    assert gone.attempts == 3
    assert len(sender.attempts) == 3
    assert (
        metric("sipas_outbox_failed_total", channel=CHANNEL, reason="attempts") == failed_before + 1
    )


async def test_bad_request_fails_the_message_only(
    sessions: SessionFactory, sender: FakeSender, clock: FakeClock
) -> None:
    bad = await put(sessions, clock, "7001", "broken")
    good = await put(sessions, clock, "7001", "fine")
    sender.fail("7001", PermanentSendError("Bad Request: can't parse entities"))
    dispatcher = make_dispatcher(sessions, sender, clock)

    assert await dispatcher.drain(2) == 1

    failed = await row(sessions, bad)
    assert failed.status == OutboxStatus.FAILED
    assert failed.last_error is not None
    assert "can't parse entities" in failed.last_error
    assert (await row(sessions, good)).status == OutboxStatus.SENT


async def _citizen_with_surveys(sessions: SessionFactory, clock: FakeClock, address: str) -> int:
    """A citizen reachable at `address` with an invited and a completed survey."""
    async with sessions.begin() as session:
        unit = Unit(code="U1", name="Phường 1")
        procedure = Procedure(code="P1", name="Cấp giấy")
        citizen = Citizen()
        session.add_all([unit, procedure, citizen])
        await session.flush()
        session.add(CitizenContact(citizen_id=citizen.id, channel=CHANNEL, address=address))
        for n, status in enumerate((SurveyStatus.INVITED, SurveyStatus.COMPLETED)):
            case = Case(
                case_code=f"C{n}",
                unit_id=unit.id,
                procedure_id=procedure.id,
                status="resolved",
                received_at=clock.now(),
                due_at=clock.now(),
                body_hash="x",
            )
            session.add(case)
            await session.flush()
            session.add(
                Survey(
                    ref=f"r{n}",
                    case_id=case.id,
                    questionnaire="sipas-short",
                    status=status,
                    channel=CHANNEL,
                    address=address,
                    due_at=clock.now(),
                )
            )
        return citizen.id


async def test_blocked_bot_marks_contact_and_surveys_unreachable(
    sessions: SessionFactory, sender: FakeSender, clock: FakeClock
) -> None:
    citizen_id = await _citizen_with_surveys(sessions, clock, "8001")
    blocked = await put(sessions, clock, "8001", "question 1")
    queued = await put(sessions, clock, "8001", "question 2")
    other = await put(sessions, clock, "8002", "someone else")
    sender.fail("8001", Unreachable("Forbidden: bot was blocked by the user"))
    dispatcher = make_dispatcher(sessions, sender, clock)

    assert await dispatcher.drain(2) == 1

    assert sender.texts() == ["someone else"]
    assert [a.text for a in sender.attempts if a.address == "8001"] == ["question 1"]
    assert (await row(sessions, blocked)).status == OutboxStatus.FAILED
    assert (await row(sessions, queued)).status == OutboxStatus.CANCELLED
    assert (await row(sessions, other)).status == OutboxStatus.SENT
    async with sessions() as session:
        contact = await session.scalar(
            select(CitizenContact).where(CitizenContact.citizen_id == citizen_id)
        )
        assert contact is not None
        assert contact.status == ContactStatus.UNREACHABLE
        statuses = {
            ref: status for ref, status in await session.execute(select(Survey.ref, Survey.status))
        }
    assert statuses == {"r0": SurveyStatus.UNREACHABLE, "r1": SurveyStatus.COMPLETED}

    assert await dispatcher.drain(2) == 0
    assert len([a for a in sender.attempts if a.address == "8001"]) == 1


async def test_dedupe_key_replay_enqueues_nothing(
    sessions: SessionFactory, clock: FakeClock
) -> None:
    async with sessions.begin() as session:
        first = await outbox.enqueue(
            session, channel=CHANNEL, address="9001", payload={"text": "hi"}, dedupe_key="k1"
        )
        replay = await outbox.enqueue(
            session, channel=CHANNEL, address="9001", payload={"text": "hi"}, dedupe_key="k1"
        )
    assert first is not None
    assert replay is None

    # Two transactions replaying the same event at the same time: one row, no error.
    async def replay_concurrently() -> OutboxMessage | None:
        async with sessions.begin() as session:
            return await outbox.enqueue(
                session, channel=CHANNEL, address="9001", payload={"text": "x"}, dedupe_key="k2"
            )

    async with sessions.begin() as session:
        winner = await outbox.enqueue(
            session, channel=CHANNEL, address="9001", payload={"text": "x"}, dedupe_key="k2"
        )
        loser = asyncio.create_task(replay_concurrently())
        await asyncio.sleep(0.1)  # the second insert is now waiting for this transaction
    assert winner is not None
    assert await loser is None
    async with sessions() as session:
        keys = (await session.scalars(select(OutboxMessage.dedupe_key))).all()
    assert sorted(k for k in keys if k) == ["k1", "k2"]


async def test_restart_mid_backlog_sends_each_message_once(
    sessions: SessionFactory, sender: FakeSender, clock: FakeClock
) -> None:
    texts = [f"msg {i}" for i in range(40)]
    for i, text in enumerate(texts):
        await put(sessions, clock, str(11_000 + i), text)
    first = make_dispatcher(sessions, sender, clock, global_rate=50.0)
    stop = asyncio.Event()
    running = asyncio.create_task(first.run(stop))
    async with asyncio.timeout(2):
        await sender.wait_until(lambda: len(sender.deliveries) >= 10)
    stop.set()
    await running
    sent_by_first = len(sender.deliveries)
    assert 10 <= sent_by_first < 40

    # A process that claimed rows and died: its claims stand until the lease runs out.
    async with sessions.begin() as session:
        orphaned = await outbox.claim_due(session, clock.now(), 5, timedelta(seconds=60))
    assert len(orphaned.messages) == 5

    second = make_dispatcher(sessions, sender, clock, global_rate=200.0)
    assert await second.drain(3) == 40 - sent_by_first - 5
    clock.advance(timedelta(seconds=61))
    assert await second.drain(3) == 5

    assert sorted(sender.texts()) == sorted(texts)  # every message exactly once
    async with sessions() as session:
        assert await outbox.pending_count(session) == 0


async def test_crash_after_platform_accepted_resends_after_lease(
    sessions: SessionFactory,
    sender: FakeSender,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The documented at-least-once window: accepted, then no `mark_sent` commit."""
    message = await put(sessions, clock, "12001", "once or twice")
    real_mark_sent = outbox.mark_sent

    async def database_gone(*args: Any, **kwargs: Any) -> bool:
        raise OperationalError("UPDATE outbox", {}, Exception("connection lost"))

    monkeypatch.setattr(outbox, "mark_sent", database_gone)
    dispatcher = make_dispatcher(sessions, sender, clock)
    await dispatcher.run_once()
    assert sender.texts() == ["once or twice"]
    assert (await row(sessions, message)).status == OutboxStatus.PENDING

    monkeypatch.setattr(outbox, "mark_sent", real_mark_sent)
    restarted = make_dispatcher(sessions, sender, clock)
    assert await restarted.drain(2) == 0  # still claimed by the "dead" process
    clock.advance(timedelta(seconds=60))
    assert await restarted.drain(2) == 1
    assert sender.texts() == ["once or twice", "once or twice"]
    assert (await row(sessions, message)).status == OutboxStatus.SENT


async def test_clear_buttons_of_refers_to_the_sent_message(
    sessions: SessionFactory, sender: FakeSender, clock: FakeClock
) -> None:
    question = await put(sessions, clock, "13001", "question")
    dispatcher = make_dispatcher(sessions, sender, clock)
    await dispatcher.drain(2)
    unsent = await put(sessions, clock, "13002", "elsewhere")
    async with sessions.begin() as session:
        stored = await session.get(OutboxMessage, unsent)
        assert stored is not None
        stored.not_before = clock.now() + timedelta(days=1)

    await put(sessions, clock, "13001", "next", payload={"clear_buttons_of": question})
    await put(sessions, clock, "13001", "not sent yet", payload={"clear_buttons_of": unsent})
    await put(sessions, clock, "13003", "someone else's", payload={"clear_buttons_of": question})
    await dispatcher.drain(2)

    cleared = {d.text: d.clear_buttons_of for d in sender.deliveries}
    assert cleared == {
        "question": None,
        "next": "m1",
        "not sent yet": None,
        "someone else's": None,
    }


async def test_wake_sends_a_reply_within_milliseconds(
    sessions: SessionFactory, sender: FakeSender, clock: FakeClock
) -> None:
    dispatcher = make_dispatcher(sessions, sender, clock, idle_interval=30.0)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    try:
        await asyncio.sleep(0.05)  # idle now, sleeping for up to 30 s
        await put(sessions, clock, "14001", "answer", priority=Priority.REPLY)
        woken = time.monotonic()
        dispatcher.wake()
        async with asyncio.timeout(1):
            await sender.wait_until(lambda: bool(sender.deliveries))
    finally:
        stop.set()
        await running
    assert sender.deliveries[0].at - woken < 0.5  # not the 30 s idle interval


async def test_logs_mask_addresses_and_never_show_text(
    sessions: SessionFactory,
    sender: FakeSender,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await put(sessions, clock, "987654321", "Nguyễn Văn A, 0912345678")
    await put(sessions, clock, "987650000", "secret too")
    sender.fail("987654321", TransientSendError("timed out"))
    sender.fail("987650000", Unreachable("Forbidden: bot was blocked by the user"))
    caplog.set_level(logging.DEBUG, logger="bot.outbox")

    await make_dispatcher(sessions, sender, clock).drain(2)

    assert "tg:…4321" in caplog.text
    assert "tg:…0000" in caplog.text
    for secret in ("987654321", "987650000", "Nguyễn", "0912345678", "secret too"):
        assert secret not in caplog.text
    assert mask_address("telegram", "42") == "tg:…"


def test_rates_must_be_positive() -> None:
    clock = FakeClock(datetime(2026, 11, 23, tzinfo=UTC))
    with pytest.raises(ValueError, match="rates"):
        Dispatcher(None, {}, clock, global_rate=0)


async def test_a_reply_behind_a_send_in_flight_follows_it(
    sessions: SessionFactory, clock: FakeClock
) -> None:
    slow = FakeSender(latency=0.1)
    await put(sessions, clock, "15001", "question 1", priority=Priority.REPLY)
    dispatcher = make_dispatcher(sessions, slow, clock, idle_interval=30.0)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    try:
        async with asyncio.timeout(1):
            await slow.wait_until(lambda: bool(slow.attempts))  # the first is in flight
        await put(sessions, clock, "15001", "question 2", priority=Priority.REPLY)
        dispatcher.wake()  # this claim cannot take it: the chat is busy
        async with asyncio.timeout(1):  # far less than the 30 s idle interval
            await slow.wait_until(lambda: len(slow.deliveries) == 2)
    finally:
        stop.set()
        await running
    assert slow.texts() == ["question 1", "question 2"]


async def test_two_dispatchers_share_the_outbox(sessions: SessionFactory, clock: FakeClock) -> None:
    """Two claimants on one database (as for a moment when a leader hands over): every
    message once, each chat's messages in order."""
    expected: dict[str, list[str]] = {}
    for i in range(60):
        address = str(16_000 + i % 20)
        text = f"{address}-{i // 20}"
        expected.setdefault(address, []).append(text)
        await put(sessions, clock, address, text)
    progress = asyncio.Event()
    # Sends slow enough that one dispatcher's claim (8 rows) is still in flight when the other
    # claims: the other then finds free chats, so sharing is certain, not a race.
    senders = [FakeSender(latency=0.05, changed=progress) for _ in range(2)]
    dispatchers = [
        make_dispatcher(
            sessions,
            sender,
            clock,
            batch_size=8,
            per_chat_rate=100.0,
            idle_interval=0.02,
            leadership=SoleSender(exclusive=False),  # both send: the claims keep them apart
        )
        for sender in senders
    ]
    stop = asyncio.Event()
    running = [asyncio.create_task(d.run(stop)) for d in dispatchers]
    try:
        async with asyncio.timeout(5):
            await senders[0].wait_until(lambda: sum(len(s.deliveries) for s in senders) >= 60)
    finally:
        stop.set()
        await asyncio.gather(*running)

    deliveries = sorted((d for s in senders for d in s.deliveries), key=lambda d: d.at)
    assert len(deliveries) == 60
    for address, texts in expected.items():
        assert [d.text for d in deliveries if d.address == address] == texts
    assert all(s.deliveries for s in senders)  # both took part


async def test_keeps_running_when_the_database_is_briefly_away(
    sessions: SessionFactory,
    sender: FakeSender,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real_claim_due = outbox.claim_due
    failures = [OperationalError("SELECT", {}, Exception("connection refused"))]

    async def flaky_claim_due(*args: Any, **kwargs: Any) -> list[OutboxMessage]:
        if failures:
            raise failures.pop()
        return await real_claim_due(*args, **kwargs)

    monkeypatch.setattr(outbox, "claim_due", flaky_claim_due)
    await put(sessions, clock, "17001", "still delivered")
    dispatcher = make_dispatcher(sessions, sender, clock, idle_interval=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    try:
        async with asyncio.timeout(1):
            await sender.wait_until(lambda: bool(sender.deliveries))
    finally:
        stop.set()
        await running
    assert "outbox claim failed" in caplog.text


async def test_a_claim_gives_its_rows_as_claimed_even_to_a_session_that_held_them(
    sessions: SessionFactory, clock: FakeClock
) -> None:
    """The claimed rows come back from the claim's UPDATE: an object the session had loaded
    before is brought up to date, not given back as it was."""
    async with sessions.begin() as session:
        queued = await outbox.enqueue(
            session,
            channel=CHANNEL,
            address="4242",
            payload={"text": "hello"},
            not_before=clock.now(),
        )
        assert queued is not None
    async with sessions.begin() as session:
        loaded = await session.get(OutboxMessage, queued.id)
        assert loaded is not None and loaded.claim_token is None
        claim = await outbox.claim_due(session, clock.now(), 5, timedelta(seconds=60))
        [message] = claim.messages
        assert message is loaded
        assert message.claim_token == claim.token
        assert message.claimed_until == clock.now() + timedelta(seconds=60)
        assert message.announced_at is None


async def test_no_empty_claim_follows_one_that_saw_every_claimable_row(
    sessions: SessionFactory,
    sender: FakeSender,
    clock: FakeClock,
    pacing: FakePacing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim that looked at every claimable row and took fewer than it could is not
    followed by another at once (that one found nothing: an empty claim after every
    invitation). A claim that may have left due rows behind (the backlog's front was full)
    is followed at once, and a wake while rows are held (a claim of only what would go
    before them, which finds nothing here) does not stop that. The idle interval is an
    hour: any claim within the test's fake minute is one the dispatcher chose to make."""
    claims: list[int] = []
    real_claim_due = outbox.claim_due

    async def claim_due(*args: Any, **kwargs: Any) -> outbox.Claim:
        claimed = await real_claim_due(*args, **kwargs)
        claims.append(len(claimed.messages))
        return claimed

    monkeypatch.setattr(outbox, "claim_due", claim_due)
    await put(sessions, clock, "41000", "the only one")
    dispatcher = make_dispatcher(
        sessions, sender, clock, idle_interval=3600.0, batch_size=2, global_rate=4.0, pacing=pacing
    )
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    try:
        async with asyncio.timeout(60):
            await pacing.run(lambda: len(sender.deliveries) == 1)
            settled_at = pacing.now
            await pacing.run(lambda: pacing.now - settled_at >= 5.0)
            assert claims == [1]

            # Ten due rows, two a claim (a batch of two): a claim's front of eight rows is
            # full, so the next claim follows without waiting for the idle hour; each row
            # queued with a wake, as a handler queues, while the bot's pace holds rows back.
            for i in range(10):
                await put(sessions, clock, str(42_000 + i), f"backlog {i}")
                dispatcher.wake()
                await pacing.run(lambda start=pacing.now: pacing.now - start >= 0.1)
            await pacing.run(lambda: len(sender.deliveries) == 11, limit=60.0)
    finally:
        stop.set()
        await pacing.complete(running)
    assert sum(claims) == 11


async def test_a_claim_takes_its_own_values_though_its_statements_are_built_once(
    sessions: SessionFactory, clock: FakeClock
) -> None:
    """The claim's statements are built once per shape (storage/repositories/outbox.py):
    two claims of one shape with different channels, exclusions, urgency and times each get
    what their own values select, never what the first one's did."""
    rows = [
        ("telegram", "1", Priority.REPLY, timedelta(0)),
        ("telegram", "2", Priority.INVITATION, timedelta(0)),
        ("zalo", "3", Priority.REPLY, timedelta(0)),
        ("zalo", "4", Priority.INVITATION, timedelta(minutes=5)),
    ]
    async with sessions.begin() as session:
        await session.execute(
            insert(OutboxMessage),
            [
                {
                    "channel": channel,
                    "address": address,
                    "priority": priority,
                    "payload": {"text": address},
                    "status": OutboxStatus.PENDING,
                    "attempts": 0,
                    "not_before": clock.now() + later,
                }
                for channel, address, priority, later in rows
            ],
        )
        ids = {
            address: id_
            for id_, address in await session.execute(
                select(OutboxMessage.id, OutboxMessage.address)
            )
        }
    lease = timedelta(seconds=60)

    async def claimed(now: datetime, **kwargs: Any) -> list[str]:
        async with sessions.begin() as session:
            claim = await outbox.claim_due(session, now, 10, lease, **kwargs)
            await outbox.release_claims(session, [m.id for m in claim.messages])
        return [m.address for m in claim.messages]

    now = clock.now()
    assert await claimed(now, channels=["telegram"]) == ["1", "2"]
    assert await claimed(now, channels=["zalo"]) == ["3"]
    assert await claimed(now + timedelta(minutes=5), channels=["zalo"]) == ["3", "4"]
    assert await claimed(now, channels=["telegram"], exclude=[ids["1"]]) == ["2"]
    assert await claimed(now, channels=["telegram"], exclude=[ids["2"]]) == ["1"]
    urgent = Priority.INVITATION
    assert await claimed(now, more_urgent_than=urgent) == ["1", "3"]
    assert await claimed(now, more_urgent_than=urgent + 1) == ["1", "3", "2"]
    assert await claimed(now, channels=["zalo"], exclude=[ids["3"]], more_urgent_than=urgent) == []


async def test_one_busy_address_does_not_starve_the_others(
    sessions: SessionFactory, clock: FakeClock, pacing: FakePacing
) -> None:
    """500 complaints for one head, then 100 other chats: each claim takes one row per chat."""
    async with sessions.begin() as session:
        rows = [("900", f"complaint {i}") for i in range(500)]
        rows += [(str(30_000 + i), f"invitation {i}") for i in range(100)]
        await session.execute(
            insert(OutboxMessage),
            [
                {
                    "channel": CHANNEL,
                    "address": address,
                    "priority": Priority.NOTICE,
                    "payload": {"text": text},
                    "status": OutboxStatus.PENDING,
                    "attempts": 0,
                    "not_before": clock.now(),
                }
                for address, text in rows
            ],
        )
    async with sessions.begin() as session:
        first = await outbox.claim_due(session, clock.now(), 30, timedelta(seconds=60))
    assert [m.payload["text"] for m in first.messages][:2] == ["complaint 0", "invitation 0"]
    assert len({m.address for m in first.messages}) == 30
    assert first.more_behind == {(CHANNEL, "900")}
    async with sessions.begin() as session:
        second = await outbox.claim_due(session, clock.now(), 200, timedelta(seconds=60))
    # The head's next complaint waits for the first to be settled; the 71 others all come.
    assert len(second.messages) == 71
    assert "900" not in {m.address for m in second.messages}
    async with sessions.begin() as session:
        await outbox.release_claims(session, [m.id for m in first.messages + second.messages])

    sender = FakeSender(clock=pacing.monotonic)
    dispatcher = make_dispatcher(
        sessions, sender, clock, global_rate=50.0, per_chat_rate=1.0, pacing=pacing
    )
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    try:
        async with asyncio.timeout(60):
            await pacing.run(lambda: len(sender.texts()) - len(sender.texts("900")) == 100)
    finally:
        stop.set()
        await running
    # Every other chat was served within the first seconds, the head at one a second.
    assert len(sender.texts("900")) <= 4
    assert sender.texts("900") == [f"complaint {i}" for i in range(len(sender.texts("900")))]


async def test_a_send_that_outlived_its_lease_is_not_settled_by_its_old_holder(
    sessions: SessionFactory, clock: FakeClock
) -> None:
    first = await put(sessions, clock, "31001", "slow one")
    behind = await put(sessions, clock, "31001", "behind it")
    lease = timedelta(seconds=60)
    async with sessions.begin() as session:
        old = await outbox.claim_due(session, clock.now(), 10, lease)
    assert [m.id for m in old.messages] == [first]
    clock.advance(lease + timedelta(seconds=1))  # the old holder stalled past its lease
    async with sessions.begin() as session:
        new = await outbox.claim_due(session, clock.now(), 10, lease)
    assert [m.id for m in new.messages] == [first]
    assert new.token != old.token

    async with sessions.begin() as session:
        assert not await outbox.mark_sent(
            session, first, token=old.token, now=clock.now(), platform_message_id="late"
        )
        assert not await outbox.mark_retry(
            session, first, token=old.token, not_before=clock.now(), error="x"
        )
        assert not await outbox.mark_failed(session, first, token=old.token, error="x")
        await outbox.release_claims(session, [first], token=old.token)
    held = await row(sessions, first)
    assert held.status == OutboxStatus.PENDING
    assert held.claim_token == new.token
    assert held.claimed_until == clock.now() + lease
    # Still held by the new claimant: nothing of that chat can be claimed, nothing overtakes.
    async with sessions.begin() as session:
        assert (await outbox.claim_due(session, clock.now(), 10, lease)).messages == []
        assert await outbox.mark_sent(
            session, first, token=new.token, now=clock.now(), platform_message_id="m1"
        )
    assert (await row(sessions, first)).platform_message_id == "m1"
    async with sessions.begin() as session:
        after = await outbox.claim_due(session, clock.now(), 10, lease)
    assert [m.id for m in after.messages] == [behind]


async def test_a_dispatcher_that_lost_its_claim_does_not_settle_it(
    sessions: SessionFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    message = await put(sessions, clock, "32001", "stalled")
    taken_over: list[str] = []

    class StallingSender(FakeSender):
        async def send(
            self, address: str, payload: Mapping[str, Any], *, clear_buttons_of: str | None
        ) -> str | None:
            # While this send hangs, its lease runs out and another process claims the row.
            clock.advance(timedelta(seconds=61))
            async with sessions.begin() as session:
                other = await outbox.claim_due(session, clock.now(), 10, timedelta(seconds=60))
            taken_over.extend(m.claim_token or "" for m in other.messages)
            return await super().send(address, payload, clear_buttons_of=clear_buttons_of)

    dispatcher = make_dispatcher(sessions, StallingSender(), clock)
    await dispatcher.run_once()

    stored = await row(sessions, message)
    assert len(taken_over) == 1
    assert stored.status == OutboxStatus.PENDING  # the new holder settles it, not we
    assert stored.claim_token == taken_over[0]
    assert "claim was lost" in caplog.text


@pytest.mark.parametrize("processes", [2, 3])
async def test_dispatchers_on_one_postgresql_hold_the_limits_together(
    sessions: SessionFactory, clock: FakeClock, pacing: FakePacing, processes: int
) -> None:
    """Several dispatchers (one per process) send as one bot: never more than 10 in any
    second nor two to a chat within a second, also when the sender stops and another takes
    over. Every message once, each chat's in order."""
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("SQLite has one process by definition")
    expected: dict[str, list[str]] = {}
    for i in range(60):
        address = str(33_000 + i % 20)
        text = f"{address}-{i // 20}"
        expected.setdefault(address, []).append(text)
        await put(sessions, clock, address, text)
    senders = [FakeSender(clock=pacing.monotonic) for _ in range(processes)]
    dispatchers = [
        make_dispatcher(sessions, sender, clock, global_rate=10.0, per_chat_rate=1.0, pacing=pacing)
        for sender in senders
    ]
    stops = [asyncio.Event() for _ in dispatchers]
    running = [asyncio.create_task(d.run(stop)) for d, stop in zip(dispatchers, stops, strict=True)]

    def delivered() -> int:
        return sum(len(s.deliveries) for s in senders)

    try:
        async with asyncio.timeout(90):
            await pacing.run(lambda: delivered() >= 15)
            leader = next(i for i, s in enumerate(senders) if s.deliveries)
            stops[leader].set()  # the sender goes away mid-backlog; another takes over
            await pacing.run(lambda: delivered() >= 60)
    finally:
        for stop in stops:
            stop.set()
        await pacing.complete(asyncio.gather(*running))

    deliveries = sorted((d for s in senders for d in s.deliveries), key=lambda d: d.at)
    assert len(deliveries) == 60
    assert sum(1 for s in senders if s.deliveries) == 2  # the first sender, then one other
    assert most_in_a_window([d.at for d in deliveries]) <= 10
    for address, texts in expected.items():
        mine = [d for d in deliveries if d.address == address]
        assert [d.text for d in mine] == texts
        assert most_in_a_window([d.at for d in mine]) == 1


async def test_a_notify_wakes_the_sender_in_another_process(
    migrated_database_url: str,
    sessions: SessionFactory,
    sender: FakeSender,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reply queued by another process (no wake() here) leaves at once, not after the
    sender's idle interval: the enqueue NOTIFYs on commit and the sender LISTENs."""
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("SQLite has one process: the in-process wake() is the notification")
    idle = asyncio.Event()
    real_claim_due = outbox.claim_due

    async def claim_due(*args: Any, **kwargs: Any) -> outbox.Claim:
        claimed = await real_claim_due(*args, **kwargs)
        if not claimed.messages:
            idle.set()  # found nothing: the next look is 30 s away unless something wakes it
        return claimed

    monkeypatch.setattr(outbox, "claim_due", claim_due)
    dispatcher = make_dispatcher(sessions, sender, clock, idle_interval=30.0)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    other_process = engine_for(migrated_database_url)
    try:
        async with asyncio.timeout(5):
            await idle.wait()
        await put(create_session_factory(other_process), clock, "34001", "answer")
        async with asyncio.timeout(5):  # far less than the 30 s idle interval
            await sender.wait_until(lambda: bool(sender.deliveries))
    finally:
        stop.set()
        await running
        await other_process.dispose()
    assert sender.texts() == ["answer"]
    assert isinstance(dispatcher._leadership, AdvisoryLockLeadership)


class TakingOver:
    """A leadership won from another sender (contended), exclusive as PostgreSQL's is."""

    contended = True
    exclusive = True

    def __init__(self) -> None:
        self.lost = asyncio.Event()

    async def acquire(self, stop: asyncio.Event, on_notify: Callable[[], None]) -> bool:
        return True

    async def release(self) -> None:
        return None


async def sent_earlier(sessions: SessionFactory, address: str, at: datetime) -> None:
    async with sessions.begin() as session:
        row = await outbox.enqueue(
            session, channel=CHANNEL, address=address, payload={"text": "x"}, not_before=at
        )
        assert row is not None
        row.status, row.sent_at = OutboxStatus.SENT, at


@pytest.mark.parametrize("marked", [10, 4])
async def test_a_new_sender_counts_the_last_window_of_the_one_before(
    sessions: SessionFactory, clock: FakeClock, pacing: FakePacing, marked: int
) -> None:
    """A sender taking over puts its predecessor's last window into its own pacing: the sends
    marked in the outbox at their start, the rest of the limit as started now (what was cut
    off or failed is unknown), and a freed claim it had announced waits one chat spacing like
    a retry, while one it never announced is free at once. After a sender draining at the
    limit it goes on at the limit, not after a whole window's pause."""
    now = clock.now()
    for i in range(marked):  # one every 0.1 s, the newest 0.05 s ago
        await sent_earlier(sessions, str(36_000 + i), now - timedelta(seconds=0.05 + 0.1 * i))
    await sent_earlier(sessions, "36100", now - timedelta(seconds=5))  # long gone: not counted
    held = await put(sessions, clock, "36200", "in flight when its sender died")
    later = await put(sessions, clock, "36400", "held, not yet announced")
    async with sessions.begin() as session:
        claimed = await outbox.claim_due(session, now, 10, timedelta(seconds=60))
        announced = await outbox.announce(session, [held], token=claimed.token, now=now)
    assert [m.id for m in claimed.messages] == [held, later]
    assert announced == {held}
    leadership = TakingOver()
    dispatcher = make_dispatcher(
        sessions,
        FakeSender(),
        clock,
        global_rate=10.0,
        per_chat_rate=1.0,
        pacing=pacing,
        leadership=leadership,
    )
    mono = pacing.monotonic()

    await dispatcher._take_over(leadership, lambda: False)

    pace = dispatcher._paces[CHANNEL]
    window = 1.03  # 10 in any 1.03 s (the 3 % margin)
    if marked == 10:
        # The oldest of the ten, 0.95 s ago, leaves the window 0.08 s from now.
        assert pace.ready_at(mono) == pytest.approx(mono - 0.95 + window)
    else:
        # Four marked, six unknown taken as now: the fifth start waits for the oldest marked.
        assert pace.ready_at(mono) == pytest.approx(mono - 0.35 + window)
        assert pace.ready_at(mono, cost=4) == pytest.approx(mono - 0.05 + window)
        assert pace.ready_at(mono, cost=5) == pytest.approx(mono + window)  # six taken as now
    assert dispatcher._next_at[(CHANNEL, "36000")] == pytest.approx(mono - 0.05 + window)
    async with sessions.begin() as session:
        freed = await session.get(OutboxMessage, held)
        # Freed, and waiting one chat spacing as a tried row waits for its retry: it may have
        # gone out just before its sender died.
        assert freed is not None and freed.claim_token is None
        assert freed.not_before == now + timedelta(seconds=window)
        assert freed.last_error == outbox.TAKEN_OVER
        # Never announced, so never sent: free as it was, due at once.
        unsent = await session.get(OutboxMessage, later)
        assert unsent is not None and unsent.claim_token is None
        assert unsent.not_before <= now and unsent.last_error is None
    # Meanwhile other chats' rows are claimed at once; not that one (nor its chat).
    await put(sessions, clock, "36200", "behind it in its chat")
    await put(sessions, clock, "36300", "another chat")
    async with sessions.begin() as session:
        claim = await outbox.claim_due(session, now, 10, timedelta(seconds=60))
        assert [m.address for m in claim.messages] == ["36400", "36300"]


class PacedWall:
    """A wall clock that moves with the fake monotonic one (sent_at and retries follow it)."""

    def __init__(self, start: datetime, pacing: FakePacing) -> None:
        self._start, self._mono, self._pacing = start, pacing.monotonic(), pacing

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._pacing.monotonic() - self._mono)


class AnnouncementChecker(FakeSender):
    """Notes every call whose row was not announced in the outbox before it."""

    def __init__(self, sessions: SessionFactory, pacing: FakePacing) -> None:
        super().__init__(clock=pacing.monotonic)
        self.sessions = sessions
        self.unannounced: list[str] = []

    async def send(
        self, address: str, payload: Mapping[str, Any], *, clear_buttons_of: str | None
    ) -> str | None:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(OutboxMessage).where(OutboxMessage.address == address)
            )
            sent = next(row for row in rows if row.payload["text"] == payload["text"])
        if sent.announced_at is None:
            self.unannounced.append(address)
        return await super().send(address, payload, clear_buttons_of=clear_buttons_of)


async def test_a_sender_that_dies_leaves_only_its_announced_rows_waiting(
    sessions: SessionFactory, clock: FakeClock, pacing: FakePacing
) -> None:
    """A sender announces the next half second's rows before it calls the platform for any
    of them, not its whole claim. When it stops dead mid-backlog (no release, claims left
    behind), the next sender frees the rest at once and goes on at the limit; only the few
    announced rows, perhaps sent just before, wait one chat spacing."""
    wall = PacedWall(clock.now(), pacing)
    sender = AnnouncementChecker(sessions, pacing)
    for i in range(60):
        await put(sessions, clock, f"37{i:03d}", f"n{i}")
    rates = {"global_rate": 10.0, "per_chat_rate": 1.0, "pacing": pacing}
    first = make_dispatcher(sessions, sender, wall, leadership=SoleSender(), **rates)

    # Sends 20, then stops dead: what it holds stays claimed in the database.
    await pacing.complete(first._pump(lambda: len(sender.deliveries) >= 20))
    await asyncio.gather(*first._inflight.values(), *filter(None, [first._announcements.writing]))
    async with sessions() as session:
        held = (
            await session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.status == OutboxStatus.PENDING,
                    OutboxMessage.claimed_until > wall.now(),
                )
            )
        ).all()
    announced = {row.address for row in held if row.announced_at is not None}
    assert len(held) == 40  # the whole backlog was claimed ...
    assert 1 <= len(announced) <= 5  # ... half a second of it at 10 a second announced

    # A reply queued meanwhile to a chat whose announced row may just have reached it: first
    # in its chat's order, free to claim, yet it must keep its distance from that row.
    answered = min(announced)
    await put(sessions, clock, answered, "reply since", priority=Priority.REPLY)

    takeover = pacing.monotonic()
    second = make_dispatcher(sessions, sender, wall, leadership=TakingOver(), **rates)
    await second._take_over(TakingOver(), lambda: False)
    await second._claim()
    # Fake time stands still here: the rows never announced are claimable at once ...
    assert sorted(c.address for c in second._held.values()) == sorted(
        [answered] + [row.address for row in held if row.address not in announced]
    )
    # ... and go on at the limit: the next start comes when the oldest of the dead sender's
    # last ten leaves the window, as its own would have, well before a chat spacing.
    resume = sorted(d.at for d in sender.deliveries)[-10] + 1.03
    assert resume < takeover + 1.03
    pacing.advance(resume - pacing.monotonic() + 0.001)
    started = await second._dispatch()  # its first rows were announced with the claim
    assert len(started) == 1
    await asyncio.gather(*started)
    await pacing.complete(second._pump(lambda: len(sender.deliveries) >= 61))
    await asyncio.gather(*second._inflight.values())

    assert sender.unannounced == []
    assert sorted(d.address for d in sender.deliveries) == sorted(
        [answered] + [f"37{i:03d}" for i in range(60)]
    )
    # The announced ones, perhaps sent already, and anything else to their chats go a chat
    # spacing after the takeover.
    after = sender.deliveries[20:]
    assert all(d.at >= takeover + 1.03 for d in after if d.address in announced)
    assert sender.texts(answered)[0] == "reply since"


class LateOnTheWire(FakeSender):
    """Writes its first request `late` seconds after the dispatcher started it (a busy event
    loop), and tells the dispatcher when each one reaches the wire, as the HTTP clients do."""

    def __init__(self, pacing: FakePacing, late: float) -> None:
        super().__init__(clock=pacing.monotonic)
        self.pacing, self.late = pacing, late
        self.wired: list[float] = []

    async def send(
        self, address: str, payload: Mapping[str, Any], *, clear_buttons_of: str | None
    ) -> str | None:
        if not self.wired:
            self.pacing.advance(self.late)
        on_the_wire()
        self.wired.append(self.pacing.monotonic())
        return await super().send(address, payload, clear_buttons_of=clear_buttons_of)


async def test_pacing_counts_a_send_from_when_its_request_reached_the_wire(
    sessions: SessionFactory, clock: FakeClock, pacing: FakePacing
) -> None:
    """A request written 0.3 s after the dispatcher started its send: the chat's next message
    is spaced from the write, as the platform sees it (not 0.73 s after it), and the row's
    sent_at is the write's moment, for a sender taking over to count."""
    began = pacing.monotonic()
    wall = PacedWall(clock.now(), pacing)
    sender = LateOnTheWire(pacing, late=0.3)
    first = await put(sessions, clock, "38000", "first")
    await put(sessions, clock, "38000", "second")
    dispatcher = make_dispatcher(
        sessions, sender, wall, global_rate=10.0, per_chat_rate=1.0, pacing=pacing
    )

    assert await pacing.complete(dispatcher.drain(30)) == 2

    written, then = sender.wired
    assert then - written >= 1.03
    sent = await row(sessions, first)
    assert sent.sent_at is not None
    assert sent.sent_at == clock.now() + timedelta(seconds=written - began)


async def test_held_rows_keep_their_turns_while_a_claim_runs(
    sessions: SessionFactory,
    clock: FakeClock,
    pacing: FakePacing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wake() asks for a claim while rows are held: the claim runs beside the sends, which
    go on at their turns (an awaited claim after every press cost 5-10 % of the rate)."""
    sender = FakeSender(clock=pacing.monotonic)
    for i in range(10):
        await put(sessions, clock, f"39{i:03d}", f"n{i}")
    dispatcher = make_dispatcher(
        sessions, sender, clock, global_rate=10.0, per_chat_rate=1.0, pacing=pacing
    )
    await dispatcher._claim()
    assert len(dispatcher._held) == 10
    answered = asyncio.Event()
    claim_due = outbox.claim_due

    async def slow(*args: Any, **kwargs: Any) -> outbox.Claim:
        await answered.wait()  # a database slow to answer
        return await claim_due(*args, **kwargs)

    monkeypatch.setattr(outbox, "claim_due", slow)
    dispatcher.wake()
    await pacing.complete(dispatcher._pump(lambda: len(sender.deliveries) >= 6))

    claiming = dispatcher._claiming
    assert claiming is not None and not claiming.done()  # still waiting for its answer
    answered.set()
    await claiming
    await asyncio.gather(*dispatcher._inflight.values())


async def test_replies_waiting_for_their_chat_do_not_stall_the_backlog(
    sessions: SessionFactory, clock: FakeClock, pacing: FakePacing
) -> None:
    """Citizens answering their invitations queue replies that must wait out their chat's
    spacing. Announced but not yet sendable, they must not stand in for the backlog's next
    turns: the sender keeps announcing and sending invitations at the bot's rate meanwhile
    (counting them, a few answers left nothing announced and the sender idled)."""
    sender = FakeSender(clock=pacing.monotonic)
    for i in range(60):
        await put(sessions, clock, f"41{i:03d}", f"invitation {i}", priority=Priority.INVITATION)
    # A chat takes one message every 4 s here: the replies wait long enough to see the stall.
    dispatcher = make_dispatcher(
        sessions, sender, clock, global_rate=10.0, per_chat_rate=0.25, pacing=pacing
    )
    await pacing.complete(dispatcher._pump(lambda: len(sender.deliveries) >= 8))
    # Eight citizens answer the invitation they just got: a reply to each, due at once but
    # not sendable before the chat's spacing (4.12 s after its invitation).
    answered = [d.address for d in sender.deliveries]
    for address in answered:
        await put(sessions, clock, address, f"question to {address}", priority=Priority.REPLY)
    dispatcher.wake()
    since = pacing.now
    await pacing.complete(dispatcher._pump(lambda: pacing.now - since >= 2.0))
    await asyncio.gather(*dispatcher._inflight.values())
    within = [d.text for d in sender.deliveries if since <= d.at < since + 2.0]
    # 10 a second with the 3 % margin: 19 starts in two seconds, all invitations (no reply
    # may go yet).
    assert len(within) >= 18 and all(text.startswith("invitation") for text in within), within

    await pacing.complete(
        dispatcher._pump(lambda: all(f"question to {a}" in sender.texts() for a in answered))
    )
    await asyncio.gather(*dispatcher._inflight.values())
    # The replies still go first once their chats allow.
    for address in answered:
        reply = next(d for d in sender.deliveries if d.text == f"question to {address}")
        invitation = next(d for d in sender.deliveries if d.address == address)
        assert 4.12 - 1e-9 <= reply.at - invitation.at < 4.12 + 0.2


async def test_held_rows_near_the_end_of_their_lease_are_given_back_not_sent(
    sessions: SessionFactory, clock: FakeClock, pacing: FakePacing
) -> None:
    """A row held so long that its lease is about to end (a slow rate behind a backlog) may be
    taken by another sender then: it is released, not started. The loop looks for such rows
    only once the earliest lease held can be that close, not on every pass."""
    sender = FakeSender(clock=pacing.monotonic)
    for i in range(5):
        await put(sessions, clock, f"43{i:03d}", f"slow {i}")
    dispatcher = make_dispatcher(
        sessions,
        sender,
        clock,
        global_rate=1.0,
        per_chat_rate=1.0,
        lease=timedelta(seconds=10),
        pacing=pacing,
    )
    await pacing.complete(dispatcher._pump(lambda: len(sender.deliveries) >= 1))
    assert len(dispatcher._held) == 4
    clock.advance(timedelta(seconds=8.5))  # inside the last tenth of the lease: 9 s on
    await dispatcher._dispatch()
    assert len(dispatcher._held) == 4, "not yet near the end: nothing given back"
    clock.advance(timedelta(seconds=0.6))
    pacing.advance(5.0)  # the bot's pace would allow several sends now
    started = await dispatcher._dispatch()
    assert started == [] and len(dispatcher._held) == 0
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    assert [row.status for row in rows] == [OutboxStatus.SENT] + [OutboxStatus.PENDING] * 4
    assert all(row.claimed_until is None for row in rows[1:])  # free for any sender now

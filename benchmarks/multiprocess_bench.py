"""Three `sipas-bot serve` processes share one bot: rate, limits and delivery across a kill -9.

Starts a TLS-terminating round-robin balancer (tests/tls_balancer.py, its certificate from a
throwaway CA) and N `serve` processes (webhook mode, the webhook registered at the balancer's
https address) together on an empty PostgreSQL schema (they race to migrate it), posts
resolved cases through the balancer, has a share of the citizens press "Bắt đầu" on their
invitation through the webhook as soon as it arrives (each press: a notice, the first
question as a new message and an edit of the invitation, both paced as messages), kills the
elected sender with SIGKILL once a third of the invitations arrived, and reads what a fake
Bot API (over real HTTP, in this process, answering after `--latency`) recorded on arrival:

- messages a second while the backlog drained, against the bot-wide limit (default 30/s),
  edits included;
- the most messages in any one-second window (sliding, and by calendar second);
- the most messages to one chat in any one-second window;
- every invitation delivered, and how many twice; every press answered.

Run from the repository root (PostgreSQL required; a temporary schema is dropped after):

    python benchmarks/multiprocess_bench.py [--cases 600] [--answers 200] [--processes 3]
        [--no-kill] [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

# Run as a script from the repository root: make the project importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PTB_TIMEDELTA", "true")

import aiohttp
import asyncpg  # type: ignore[import-untyped]

from tests.fakes.telegram_api import FakeTelegramAPI, SentCall
from tests.multiprocess_support import (
    FIRST_CHAT,
    arrival,
    busiest_window,
    deliver_update,
    deploy,
    invitations,
    is_invitation,
    is_question,
    load_units,
    message_calls,
    most_in_a_calendar_second,
    per_chat_most,
    post_batches,
    press_first_button,
)
from tests.tls_balancer import TlsBalancer

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


async def bench(args: argparse.Namespace) -> None:
    schema = f"bench_{secrets.token_hex(4)}"
    dsn = args.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{args.database_url}?search_path={schema}"
    try:
        if args.logs is not None:  # keep the serve logs there
            args.logs.mkdir(parents=True, exist_ok=True)
            await run(args, url, args.logs)
        else:
            with tempfile.TemporaryDirectory(prefix="sipas-mp-bench-") as directory:
                await run(args, url, Path(directory))
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


async def run(args: argparse.Namespace, url: str, directory: Path) -> None:
    # The fake platform stamps each arrival in this process's event loop. A full garbage
    # collection here (the balancer's TLS, the pressing citizens and a thousand recorded calls
    # make plenty of objects) stalled that loop 50-80 ms once a run, and the messages that
    # arrived meanwhile were stamped together: a 31st or 32nd message in one sliding second
    # at the fake that the serve logs' wire times never had. The instrument should not jitter
    # more than what it measures: no collections during the run (reference counting still
    # frees almost everything).
    gc.collect()
    gc.disable()
    try:
        await _run(args, url, directory)
    finally:
        gc.enable()


async def _run(args: argparse.Namespace, url: str, directory: Path) -> None:
    async with FakeTelegramAPI(latency=args.latency) as api:
        started = time.monotonic()
        progress = Progress(api)
        pressing = chats_to_press(args.cases, args.answers)
        deliveries: dict[int, list[int]] = {}
        killed_at: float | None = None
        backlog: list[tuple[float, int]] = []
        async with deploy(
            args.processes,
            url,
            api,
            directory,
            send_rate_global=str(args.rate),
            send_rate_per_chat="1",
            # Quiet hours until every case is in: then all invitations are due at once.
            quiet_hours=quiet_until(args.hold),
            # With --logs, each send is logged (masked) to see a takeover to the millisecond.
            log_level="DEBUG" if args.logs is not None else "INFO",
        ) as deployment:
            print(
                f"{args.processes} serve processes started together on an empty PostgreSQL "
                f"schema, behind a TLS proxy: all healthy after "
                f"{time.monotonic() - started:.1f}s"
            )
            registered = str(api.webhook["url"]) if api.webhook else "none"
            sampler: asyncio.Task[None] | None = None
            presser: asyncio.Task[None] | None = None
            try:
                await load_units(url)
                posted = time.monotonic()
                # The client in a thread of its own (as the balancer is), so that posting does
                # not stall the fake's event loop (and with it the arrival stamps).
                await asyncio.to_thread(asyncio.run, post_batches(deployment, range(args.cases)))
                print(
                    f"{args.cases} resolved cases posted (batches of 50) in "
                    f"{time.monotonic() - posted:.1f}s; invitations held by quiet hours until "
                    f"{quiet_until(args.hold, started=now_local).split('-')[1]} local time"
                )
                sampler = asyncio.create_task(sample_backlog(url, backlog))
                # Telegram's default: at most 40 webhook calls at a time.
                async with deployment.client(limit=40) as client:
                    presser = asyncio.create_task(
                        press_invitations(api, client, progress, pressing, deliveries, args)
                    )
                    # The time allowed runs from the first invitation: quiet hours hold them
                    # until the next full minute, up to a minute past --hold.
                    await api.wait_until(
                        lambda: bool(progress.update().invited), args.hold + 60 + args.timeout
                    )
                    deadline = time.monotonic() + args.timeout
                    if not args.no_kill:
                        await api.wait_until(
                            lambda: len(progress.update().invited) >= args.cases // 3,
                            args.timeout,
                        )
                        leaders = [s for s in deployment.serves if await s.is_leader(client)]
                        print(f"elected senders before the kill: {len(leaders)}")
                        leaders[0].kill()
                        killed_at = time.monotonic()
                        print(
                            f"kill -9 of the sender after {len(progress.invited)} invitations, "
                            f"at {datetime.now():%H:%M:%S.%f}"[:-3]
                        )
                    await asyncio.wait_for(presser, max(1.0, deadline - time.monotonic()))
                    accepted = {chat for chat, got in deliveries.items() if got[-1] == 200}
                    await api.wait_until(
                        lambda: (
                            len(progress.update().invited) >= args.cases
                            and progress.answered >= accepted
                        ),
                        max(1.0, deadline - time.monotonic()),
                    )
                await asyncio.sleep(2.0)  # would a duplicate still come?
            finally:
                for task in (sampler, presser):
                    if task is not None:
                        task.cancel()
        report(
            args,
            api,
            killed_at,
            directory,
            backlog,
            Webhook(registered, deliveries, progress.update(), deployment.balancer),
        )


class Progress:
    """What the platform has seen so far, read on from where it was last time: the waits of
    a run of a thousand messages must not scan every call each time the fake is called."""

    def __init__(self, api: FakeTelegramAPI) -> None:
        self.api = api
        self.invited: dict[int, SentCall] = {}  # the first invitation to each citizen
        self.edited: set[int] = set()
        self.asked: set[int] = set()
        self._read = 0

    def update(self) -> Progress:
        for call in self.api.sent[self._read :]:
            if not isinstance(call.chat_id, int) or call.chat_id < FIRST_CHAT:
                continue
            if call.method == "editMessageText":
                self.edited.add(call.chat_id)
            elif call.method == "sendMessage" and is_invitation(call):
                self.invited.setdefault(call.chat_id, call)
            elif call.method == "sendMessage" and is_question(call):
                self.asked.add(call.chat_id)
        self._read = len(self.api.sent)
        return self

    @property
    def answered(self) -> set[int]:
        """Chats whose press got both replies: the invitation edited, the question asked."""
        return self.edited & self.asked


@dataclass
class Webhook:
    """What came in through the webhook: the address registered, each press's deliveries."""

    url: str
    deliveries: dict[int, list[int]]
    progress: Progress
    balancer: TlsBalancer

    def report(self) -> None:
        answered = [got for got in self.deliveries.values() if got[-1] == 200]
        again = sum(1 for got in answered if len(got) > 1)
        print(
            f"webhook registered: {self.url} (https, the TLS proxy); "
            f"{len(self.deliveries)} updates (presses of the invitation's first button) in "
            f"through it, {len(answered)} answered 200 ({again} after a redelivery)"
        )
        print(
            f"  presses answered on the platform (invitation edited, first question sent): "
            f"{len(self.progress.answered)}; connections the proxy found refused (the killed "
            f"process) and passed to the next: {self.balancer.refused}"
        )


def chats_to_press(cases: int, answers: int) -> set[int]:
    """`answers` citizens spread evenly over the cases (every third, by default)."""
    answers = min(answers, cases)
    return {FIRST_CHAT + index * cases // answers for index in range(answers)}


async def press_invitations(
    api: FakeTelegramAPI,
    client: aiohttp.ClientSession,
    progress: Progress,
    chats: set[int],
    deliveries: dict[int, list[int]],
    args: argparse.Namespace,
) -> None:
    """Each citizen of `chats` presses "Bắt đầu" on their invitation the moment it arrives,
    delivered through the webhook as Telegram does: concurrently, and again after an answer
    other than 2xx (a press in flight at the kill gets the balancer's 502)."""

    async def deliver(chat: int, update: dict[str, Any]) -> None:
        deliveries[chat] = await deliver_update(client, api, update, attempts=5)

    waiting = set(chats)
    async with asyncio.TaskGroup() as group:
        while waiting:
            await api.wait_until(
                lambda: not waiting.isdisjoint(progress.update().invited),
                args.hold + 60 + args.timeout,  # the first waits out the quiet hours
            )
            for chat in sorted(waiting.intersection(progress.invited)):
                waiting.discard(chat)
                update = press_first_button(api, progress.invited[chat])
                group.create_task(deliver(chat, update))


now_local = datetime.now(ZoneInfo("Asia/Ho_Chi_Minh"))


def quiet_until(hold: int, started: datetime | None = None) -> str:
    """SIPAS_QUIET_HOURS from two minutes ago to the first full minute `hold` seconds on."""
    begin = started or now_local
    end = begin + timedelta(seconds=hold + 60 - (begin.second + hold) % 60)
    return f"{(begin - timedelta(minutes=2)):%H:%M}-{end:%H:%M}"


async def sample_backlog(url: str, samples: list[tuple[float, int]]) -> None:
    """Every 0.2 s: how many messages are due and unsent (the backlog the sender works on)."""
    base, schema = url.split("?search_path=", 1)
    connection = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        while True:
            count = await connection.fetchval(
                f'SELECT count(*) FROM "{schema}".outbox '
                "WHERE status = 'pending' AND not_before <= now()"
            )
            samples.append((time.monotonic(), int(count)))
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


def rate_under_backlog(
    arrivals: list[float], samples: list[tuple[float, int]], rate: float
) -> tuple[float, float]:
    """Messages a second over the sample intervals that began with at least a second's work
    due (`rate` messages): what the sender achieves when it is the bottleneck. Returns the
    rate and the seconds it was measured over."""
    busy = [(start, end) for (start, due), (end, _) in itertools.pairwise(samples) if due >= rate]
    seconds = sum(end - start for start, end in busy)
    sent = sum(1 for t in arrivals if any(start <= t < end for start, end in busy))
    return (sent / seconds if seconds else 0.0), seconds


def report(
    args: argparse.Namespace,
    api: FakeTelegramAPI,
    killed_at: float | None,
    directory: Path,
    backlog: list[tuple[float, int]],
    webhook: Webhook,
) -> None:
    received = invitations(api)
    calls = message_calls(api)
    edits = [call for call in calls if call.method.startswith("edit")]
    questions = [call for call in calls if call.method == "sendMessage" and is_question(call)]
    invited = sum(len(c) for c in received.values())
    # The fake stamps a sendMessage after its answer delay, an edit without one.
    arrivals = sorted(arrival(call) for call in calls)
    first, last = arrivals[0], arrivals[-1]
    span = last - first
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    longest = max(gaps, default=0.0)
    duplicates = sum(len(c) - len({x.text for x in c}) for c in received.values())
    print(f"limits: {args.rate:g}/s in all, 1/s per chat; platform answer time {args.latency}s")
    print(
        f"invitations: {len(received)} of {args.cases} chats reached, {duplicates} delivered twice"
    )
    webhook.report()
    print(
        f"messages: {len(calls)} in {span:.1f}s from the first to the last = "
        f"{len(calls) / span:.2f}/s ({len(calls) / span / args.rate:.1%} of the limit)"
    )
    print(
        f"  counted: {invited} invitations, {len(questions)} questions and {len(edits)} edits "
        f"after a press, {len(calls) - invited - len(questions) - len(edits)} other; every "
        "figure below counts the edits as messages, as Telegram does"
    )
    if killed_at is not None:
        print(
            f"  longest pause between two messages: {longest:.2f}s (the takeover after the kill);"
            f" without it {len(calls) / (span - longest):.2f}/s "
            f"({len(calls) / (span - longest) / args.rate:.1%} of the limit)"
        )
    under, seconds = rate_under_backlog(arrivals, backlog, args.rate)
    print(
        f"  while at least {args.rate:g} messages were due (sampled every 0.2 s, {seconds:.1f}s"
        f" in all): {under:.2f}/s ({under / args.rate:.1%} of the limit)"
    )
    if killed_at is not None:
        after = [t for t in arrivals if t > killed_at]
        if after:
            print(f"  first message after the kill: {after[0] - killed_at:.2f}s later")
    most, busiest = busiest_window(arrivals)
    when = f", from {busiest - killed_at:+.2f}s from the kill" if killed_at is not None else ""
    print(
        f"most messages in any 1 s window: {most}{when} "
        f"(by calendar second: {most_in_a_calendar_second(arrivals)}); limit {args.rate:g}"
    )
    per_chat = per_chat_most(calls)
    print(f"most messages to one chat in any 1 s window: {per_chat}")
    close = closer_than_a_second(calls)
    if close:
        gap, at = min((b - a, a) for a, b in close)
        since = f", {at - killed_at:+.2f}s from the kill" if killed_at is not None else ""
        print(
            f"  two messages to one chat within a second: {len(close)} times; the closest "
            f"{gap:.3f}s apart{since}"
        )
    held = max(most, most_in_a_calendar_second(arrivals)) <= args.rate and per_chat <= 1
    print(
        f"limits, edits included: {'held' if held else 'EXCEEDED'} "
        f"(at the platform: in every one-second window, sliding and by calendar second, and "
        f"per chat)"
    )
    if args.logs is not None:
        write_arrivals(args.logs / "arrivals.tsv", calls)
    errors = sum(
        log.read_text(errors="replace").count(" ERROR ") for log in directory.glob("serve-*.log")
    )
    print(f"ERROR lines in the serve logs: {errors}")


def write_arrivals(path: Path, calls: list[SentCall]) -> None:
    """Each message's arrival at the fake (wall clock, to the millisecond), method and chat:
    to read against the `on the wire at` of the serve logs."""
    offset = time.time() - time.monotonic()
    lines = [
        f"{datetime.fromtimestamp(arrival(call) + offset):%H:%M:%S.%f}"[:-3]
        + f"\t{call.method}\t{call.chat_id}"
        for call in sorted(calls, key=arrival)
    ]
    path.write_text("\n".join(lines) + "\n")
    print(f"arrivals at the platform written to {path}")


def closer_than_a_second(calls: list[SentCall]) -> list[tuple[float, float]]:
    """The arrivals of two consecutive messages to one chat less than a second apart."""
    by_chat: dict[object, list[float]] = {}
    for call in calls:
        by_chat.setdefault(call.chat_id, []).append(arrival(call))
    return [
        (a, b)
        for times in by_chat.values()
        for a, b in itertools.pairwise(sorted(times))
        if b - a < 1.0
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=600)
    parser.add_argument(
        "--answers", type=int, default=200, help="citizens who press their invitation's button"
    )
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument(
        "--hold", type=int, default=50, help="seconds of quiet hours from start (posting time)"
    )
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--logs", type=Path, help="keep the serve processes' logs in this folder")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()

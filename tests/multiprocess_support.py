"""Several real `sipas-bot serve` processes on one PostgreSQL schema, behind a TLS load
balancer, around one fake Bot API in the calling process: for tests/test_multiprocess.py and
benchmarks/multiprocess_bench.py.

As in production, everything from outside comes in over HTTPS through the balancer: the
cases the one-stop system posts, and the updates Telegram delivers to the webhook the bot
registered there. The fake stamps every call on arrival with this process's monotonic clock,
so the limits are checked where Telegram would check them: at the platform, across every
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import signal
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from handlers.units import load_units as load
from handlers.units import parse_units_file
from storage.db import create_session_factory
from tests.cli_support import PYTHON, free_port, subprocess_env
from tests.conftest import engine_for
from tests.fakes.telegram_api import FakeTelegramAPI, SentCall
from tests.tls_balancer import TlsBalancer, balancer_in_a_thread

API_TOKEN = "multiprocess-token-7c2e"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
WEBHOOK_SECRET = "multiprocess-webhook-secret"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# What Telegram counts as messages: sends and edits (a callback answer is not one).
MESSAGE_CALLS = frozenset(
    {
        "sendMessage",
        "sendPhoto",
        "sendDocument",
        "editMessageText",
        "editMessageReplyMarkup",
    }
)
UNITS_YAML = """\
units:
  - {code: HN, name: UBND thành phố Hà Nội}
  - {code: HN-LB, name: UBND quận Long Biên, parent: HN}
"""
FIRST_CHAT = 7_000_000


@dataclass
class Serve:
    process: asyncio.subprocess.Process
    url: str
    log: Path

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def is_leader(self, client: aiohttp.ClientSession) -> bool:
        """Whether this process is the elected sender (its /metrics gauge)."""
        async with client.get(f"{self.url}/metrics") as response:
            text = await response.text()
        found = re.search(r"^sipas_outbox_leader (\S+)$", text, re.MULTILINE)
        return found is not None and float(found.group(1)) == 1.0

    def kill(self) -> None:
        """`kill -9`: no shutdown, no release; the database sees the connections drop."""
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@dataclass
class Deployment:
    """The serve processes behind the TLS balancer: the one address the outside world knows
    (`url`), for the cases posted and for Telegram's webhook calls."""

    balancer: TlsBalancer
    serves: list[Serve]

    @property
    def url(self) -> str:
        return self.balancer.url

    def client(self, *, limit: int = 100) -> aiohttp.ClientSession:
        """A client session (of the running event loop) that trusts the balancer's CA, at most
        `limit` connections at a time."""
        connector = aiohttp.TCPConnector(ssl=self.balancer.client_ssl(), limit=limit)
        return aiohttp.ClientSession(connector=connector)


@contextlib.asynccontextmanager
async def deploy(
    count: int,
    database_url: str,
    api: FakeTelegramAPI,
    directory: Path,
    **settings: str,
) -> AsyncIterator[Deployment]:
    """`count` serve processes behind a TLS balancer, started together on one database.

    The balancer comes first: its https address is each process's SIPAS_PUBLIC_URL, so the
    webhook they register with Telegram (`setWebhook`) is the balancer's, as in production.
    The processes are stopped (SIGTERM) on the way out, the balancer after them.
    """
    async with balancer_in_a_thread() as balancer:
        serves = await start_serves(
            count, database_url, api, directory, public_url=balancer.url, **settings
        )
        balancer.backends = [serve.url for serve in serves]
        try:
            yield Deployment(balancer, serves)
        finally:
            await asyncio.gather(*(serve.stop() for serve in serves))


async def start_serves(
    count: int,
    database_url: str,
    api: FakeTelegramAPI,
    directory: Path,
    *,
    public_url: str,
    **settings: str,
) -> list[Serve]:
    """Starts `count` `serve` processes at once (webhook mode, one database, the webhook at
    `public_url`), waits until every one answers /healthz. Their logs go to files in
    `directory`."""
    units = directory / "units.yaml"
    units.write_text(UNITS_YAML, encoding="utf-8")
    serves = []
    for number in range(count):
        port = free_port()
        log = directory / f"serve-{number}.log"
        env = subprocess_env(
            SIPAS_DATABASE_URL=database_url,
            SIPAS_API_TOKENS=API_TOKEN,
            SIPAS_HTTP_PORT=str(port),
            SIPAS_TELEGRAM_TOKEN=api.token,
            SIPAS_TELEGRAM_API_URL=api.base_url,
            SIPAS_TELEGRAM_MODE="webhook",
            SIPAS_TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
            SIPAS_PUBLIC_URL=public_url,
            **{
                "SIPAS_QUIET_HOURS": "none",
                "SIPAS_LOG_LEVEL": "INFO",
                **{f"SIPAS_{key.upper()}": value for key, value in settings.items()},
            },
        )
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                PYTHON,
                "-m",
                "bot",
                "serve",
                env=env,
                cwd=directory,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=output,
            )
        serves.append(Serve(process, f"http://127.0.0.1:{port}", log))
    try:
        await asyncio.gather(*(wait_healthy(serve) for serve in serves))
    except BaseException:
        await asyncio.gather(*(serve.stop() for serve in serves))
        raise
    return serves


START_SECONDS = 60.0


async def wait_healthy(serve: Serve) -> None:
    deadline = time.monotonic() + START_SECONDS
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < deadline and serve.running:
            try:
                async with client.get(f"{serve.url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)  # polling a process that is starting up
    raise AssertionError(
        f"serve at {serve.url} did not become healthy: {serve.log.read_text(errors='replace')}"
    )


async def load_units(database_url: str) -> None:
    """The units every case refers to, loaded once (not by every process at start-up)."""
    engine = engine_for(database_url)
    try:
        async with create_session_factory(engine).begin() as session:
            await load(session, parse_units_file(UNITS_YAML))
    finally:
        await engine.dispose()


def resolved_case(number: int) -> dict[str, Any]:
    """A case resolved now, of a citizen whose Telegram chat the one-stop system knows."""
    return {
        "case_code": f"MP-{number:06d}",
        "unit_code": "HN-LB",
        # No courtesy message for this procedure: the invitation is the one message.
        "procedure": {
            "code": "2.000815",
            "name": "Chứng thực bản sao từ bản chính",
            "field": "Chứng thực",
        },
        "citizen": {
            "name": f"Công dân {number}",
            "telegram_chat_id": FIRST_CHAT + number,
            "locale": "vi",
        },
        "status": "resolved",
        "received_at": "2026-11-20T08:05:00+07:00",
        "due_at": "2099-11-25T17:00:00+07:00",
        "resolved_at": "2026-11-21T08:00:00+07:00",
    }


async def post_cases(deployment: Deployment, numbers: Iterable[int], concurrency: int = 8) -> None:
    """Posts the cases one by one, `concurrency` at a time, through the balancer."""
    async with deployment.client(limit=concurrency) as client:

        async def post(number: int) -> None:
            url = f"{deployment.url}/api/v1/cases"
            async with client.post(url, json=resolved_case(number), headers=AUTH) as answer:
                assert answer.status in (200, 201), await answer.text()

        await asyncio.gather(*(post(number) for number in numbers))


async def post_batches(deployment: Deployment, numbers: Iterable[int], size: int = 50) -> None:
    """Posts the cases in batches (`POST /api/v1/cases:batch`) through the balancer, as many
    at a time as there are processes: quick enough that the invitations make a backlog."""
    ordered = list(numbers)
    chunks = [ordered[start : start + size] for start in range(0, len(ordered), size)]
    streams = len(deployment.serves)
    async with deployment.client() as client:

        async def post_stream(index: int) -> None:
            for chunk in chunks[index::streams]:
                body = {"cases": [resolved_case(number) for number in chunk]}
                url = f"{deployment.url}/api/v1/cases:batch"
                async with client.post(url, json=body, headers=AUTH) as answer:
                    assert answer.status == 200, await answer.text()
                    summary = (await answer.json())["summary"]
                    assert not summary.get("rejected"), summary

        await asyncio.gather(*(post_stream(index) for index in range(streams)))


async def deliver_update(
    client: aiohttp.ClientSession,
    api: FakeTelegramAPI,
    update: dict[str, Any],
    *,
    attempts: int = 1,
    pause: float = 0.5,
) -> list[int]:
    """Delivers `update` as Telegram does: a POST to the webhook URL the bot registered (here
    the balancer's https address), with the registered secret in the header; an answer other
    than 2xx, or none, is delivered again, up to `attempts` times. Returns each attempt's
    status (0: no answer)."""
    webhook = api.webhook
    assert webhook is not None, "no webhook registered (setWebhook)"
    headers = {SECRET_HEADER: str(webhook["secret_token"])}
    statuses: list[int] = []
    while len(statuses) < attempts:
        if statuses:
            await asyncio.sleep(pause)  # Telegram waits before it delivers again
        try:
            async with client.post(webhook["url"], json=update, headers=headers) as answer:
                await answer.read()
                statuses.append(answer.status)
        except aiohttp.ClientError:
            statuses.append(0)
        if 200 <= statuses[-1] < 300:
            break
    return statuses


def press_first_button(api: FakeTelegramAPI, message: SentCall) -> dict[str, Any]:
    """The update of the citizen pressing the first button of `message` (an invitation: its
    "Bắt đầu", which starts the survey), read from the message as the platform holds it."""
    assert isinstance(message.chat_id, int) and message.message_id is not None
    shown = api.message_state(message.chat_id, message.message_id)
    buttons = api.buttons(shown)
    assert buttons, f"no buttons left on message {message.message_id} in {message.chat_id}"
    _, data = buttons[0]
    return api.make_callback_update(message.chat_id, data, message_id=message.message_id)


def message_calls(api: FakeTelegramAPI) -> list[SentCall]:
    return [call for call in api.sent if call.method in MESSAGE_CALLS]


def most_in_a_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most of `times` in any half-open window [t, t + window)."""
    return busiest_window(times, window)[0]


def busiest_window(times: Iterable[float], window: float = 1.0) -> tuple[int, float]:
    """The most of `times` in any half-open window [t, t + window), and the first time in
    the first such window (0.0 when there are none)."""
    ordered = sorted(times)
    most, at, first = 0, 0.0, 0
    for last, moment in enumerate(ordered):
        while ordered[first] <= moment - window:
            first += 1
        if last - first + 1 > most:
            most, at = last - first + 1, ordered[first]
    return most, at


def most_in_a_calendar_second(times: Iterable[float]) -> int:
    counts: dict[int, int] = {}
    for moment in times:
        counts[int(moment)] = counts.get(int(moment), 0) + 1
    return max(counts.values(), default=0)


def arrival(call: SentCall) -> float:
    """When the call reached the platform: when the fake had read it, before its simulated
    answer time (`FakeTelegramAPI(latency=...)`). A stamp taken after an answer delay would be
    as late as the event loop is busy, and two messages could look further apart (or closer)
    than they arrived."""
    return call.arrived if call.arrived is not None else call.timestamp


def by_chat(calls: list[SentCall]) -> dict[Any, list[SentCall]]:
    grouped: dict[Any, list[SentCall]] = {}
    for call in calls:
        grouped.setdefault(call.chat_id, []).append(call)
    return grouped


def per_chat_most(calls: list[SentCall]) -> int:
    return max(
        (most_in_a_window(map(arrival, chat_calls)) for chat_calls in by_chat(calls).values()),
        default=0,
    )


def closest_in_a_chat(calls: list[SentCall]) -> str:
    """The two calls to one chat that arrived closest together, told for a failing check:
    which methods, how far apart they arrived and were answered."""
    pairs = [
        (arrival(b) - arrival(a), a, b)
        for chat_calls in by_chat(calls).values()
        for a, b in itertools.pairwise(sorted(chat_calls, key=arrival))
    ]
    if not pairs:
        return "no chat had two calls"
    gap, first, second = min(pairs, key=lambda pair: pair[0])
    return (
        f"chat {first.chat_id}: {first.method} then {second.method}, arrived {gap:.3f} s "
        f"apart, answered {second.timestamp - first.timestamp:.3f} s apart"
    )


def is_invitation(call: SentCall) -> bool:
    """A survey invitation: its buttons start the survey or put it off (`s:<ref>:start`)."""
    return any(
        data.startswith("s:") and data.endswith(":start")
        for _, data in FakeTelegramAPI.buttons(call)
    )


def is_question(call: SentCall) -> bool:
    """A survey question: its buttons answer it (`a:<ref>:<position>:<value>`)."""
    return any(data.startswith("a:") for _, data in FakeTelegramAPI.buttons(call))


def invitations(api: FakeTelegramAPI) -> dict[Any, list[SentCall]]:
    """Invitations sent to the citizens' chats, by chat (not the questions after a press)."""
    found: dict[Any, list[SentCall]] = {}
    for call in api.calls("sendMessage"):
        if isinstance(call.chat_id, int) and call.chat_id >= FIRST_CHAT and is_invitation(call):
            found.setdefault(call.chat_id, []).append(call)
    return found


def answered_presses(api: FakeTelegramAPI) -> set[Any]:
    """The chats whose press of "Bắt đầu" was answered in full on the platform: the pressed
    invitation edited (the choice appended, the buttons gone) and the first question sent."""
    edited = {call.chat_id for call in api.calls("editMessageText")}
    asked = {call.chat_id for call in api.calls("sendMessage") if is_question(call)}
    return edited & asked

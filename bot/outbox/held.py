"""The rows a sender has claimed and not yet started, kept in the order they go.

The dispatcher's loop runs on every completion, wake and timer: several hundred times a second
under a backlog. It used to sort the held rows (up to a batch of 200) and walk all of them on
each pass, three times over (what to start, what to announce, how long to sleep): profiled
with a backlog on SQLite, that was a third of the serving process's CPU, and every invitation
waited for it. Here the order is made once per claim, a row leaves it in constant time, and
the loop's walks stop as soon as the rest cannot matter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from storage.models import OutboxMessage

_CHANNEL_TAGS = {"telegram": "tg", "zalo": "zl", "web": "web"}


def mask_address(channel: str, address: str) -> str:
    """`tg:…1234`: enough to tell chats apart in logs, not enough to find the person."""
    tag = _CHANNEL_TAGS.get(channel, channel[:3])
    tail = address[-4:] if len(address) > 6 else ""
    return f"{tag}:…{tail}"


def payload_cost(payload: Mapping[str, Any]) -> int:
    """Platform calls a send makes: clearing an old keyboard first is one more."""
    clears = payload.get("clear_buttons_of") is not None and not payload.get("edit")
    return 2 if clears else 1


@dataclass(frozen=True)
class HeldRow:
    """What the dispatcher keeps of a claimed row (plain data, no ORM session attached)."""

    id: int
    channel: str
    address: str
    priority: int
    payload: Mapping[str, Any]
    attempts: int
    claimed_until: datetime
    token: str
    # Read on every pass of the loop: worked out once.
    key: tuple[str, str] = field(init=False, repr=False, compare=False)
    cost: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.channel, self.address))
        object.__setattr__(self, "cost", payload_cost(self.payload))

    @property
    def masked(self) -> str:
        return mask_address(self.channel, self.address)

    @property
    def sensitive(self) -> bool:
        """The text holds a credential: it is not kept once the row is settled."""
        return bool(self.payload.get("sensitive"))

    @classmethod
    def of(cls, row: OutboxMessage) -> HeldRow:
        assert row.claimed_until is not None  # claim_due sets it
        assert row.claim_token is not None
        return cls(
            id=row.id,
            channel=row.channel,
            address=row.address,
            priority=row.priority,
            payload=dict(row.payload),
            attempts=row.attempts,
            claimed_until=row.claimed_until,
            token=row.claim_token,
        )


def _turn(row: HeldRow) -> tuple[int, int]:
    return (row.priority, row.id)


class HeldRows:
    """Held rows by id, and in (priority, id) order: the order of the outbox's claims."""

    def __init__(self) -> None:
        self._by_id: dict[int, HeldRow] = {}
        # In turn order; may still hold rows gone since (skipped, and dropped when they
        # outnumber the rest). Replaced, never changed in place, so that a walk under way
        # (the loop's) goes on over the list it began with.
        self._order: list[HeldRow] = []
        self._channels: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._by_id)

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def __contains__(self, row_id: object) -> bool:
        return row_id in self._by_id

    def get(self, row_id: int) -> HeldRow | None:
        return self._by_id.get(row_id)

    def ids(self) -> list[int]:
        return list(self._by_id)

    def values(self) -> list[HeldRow]:
        """Every held row, in no particular order."""
        return list(self._by_id.values())

    @property
    def channels(self) -> set[str]:
        """The channels of the rows held."""
        return {channel for channel, count in self._channels.items() if count}

    def add(self, rows: list[HeldRow]) -> None:
        for row in rows:
            old = self._by_id.get(row.id)
            if old is not None:
                self._channels[old.channel] -= 1
            self._by_id[row.id] = row
            self._channels[row.channel] += 1
        self._order = sorted([*self._live(), *rows], key=_turn)

    def remove(self, row: HeldRow) -> None:
        if self._by_id.get(row.id) is row:
            del self._by_id[row.id]
            self._channels[row.channel] -= 1
            if len(self._order) > 2 * len(self._by_id) + 32:
                self._order = list(self._live())

    def in_turn(self) -> Iterator[HeldRow]:
        """The held rows, most urgent first."""
        return self._live()

    def _live(self) -> Iterator[HeldRow]:
        by_id = self._by_id
        return (row for row in self._order if by_id.get(row.id) is row)

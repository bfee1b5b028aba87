"""The dispatcher's held rows: kept in turn order across claims and removals."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.outbox.held import HeldRow, HeldRows, mask_address, payload_cost

WHEN = datetime(2026, 12, 1, tzinfo=UTC)


def row(id_: int, priority: int = 9, channel: str = "telegram", **payload: object) -> HeldRow:
    return HeldRow(
        id=id_,
        channel=channel,
        address=f"10{id_:05d}",
        priority=priority,
        payload={"text": "x", **payload},
        attempts=0,
        claimed_until=WHEN,
        token="t",
    )


def test_rows_come_in_priority_then_id_order_across_claims() -> None:
    held = HeldRows()
    held.add([row(5), row(3), row(9)])
    held.add([row(7, priority=0), row(4)])
    assert [r.id for r in held.in_turn()] == [7, 3, 4, 5, 9]
    assert len(held) == 5 and 4 in held and held.get(4) is not None


def test_a_walk_under_way_skips_rows_removed_during_it_and_sees_no_new_ones() -> None:
    held = HeldRows()
    rows = [row(i) for i in range(1, 6)]
    held.add(rows)
    walked = []
    for current in held.in_turn():
        walked.append(current.id)
        if current.id == 1:
            held.remove(rows[1])  # 2 goes before the walk reaches it
            held.add([row(0, priority=0)])  # a reply claimed meanwhile: the next walk's
    assert walked == [1, 3, 4, 5]
    assert [r.id for r in held.in_turn()] == [0, 1, 3, 4, 5]


def test_channels_and_removal_of_a_row_replaced_by_a_newer_claim() -> None:
    held = HeldRows()
    old = row(1)
    held.add([old, row(2, channel="zalo")])
    assert held.channels == {"telegram", "zalo"}
    again = row(1)  # the same row claimed again (a new token)
    held.add([again])
    held.remove(old)  # the stale copy: nothing happens
    assert held.get(1) is again
    held.remove(again)
    assert held.channels == {"zalo"} and len(held) == 1
    many = [row(i) for i in range(10, 200)]
    held.add(many)
    for r in many:
        held.remove(r)
    assert [r.id for r in held.in_turn()] == [2]


def test_cost_key_and_mask() -> None:
    assert row(1).key == ("telegram", "1000001")
    assert row(1).cost == 1 and row(2, clear_buttons_of=5).cost == 2
    assert row(3, clear_buttons_of=5, edit=True).cost == 1 == payload_cost({"text": "x"})
    assert mask_address("telegram", "123456789") == "tg:…6789"
    assert mask_address("zalo", "12") == "zl:…"

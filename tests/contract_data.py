"""The contract's own examples, once for every test: the units file of docs/contract.md
section 5, the case body of section 4 and the API token that goes with it.

Tests that need more units extend the contract's file (`units_yaml`) instead of writing
their own copy, so a change to the example is made in one place.
"""

from __future__ import annotations

import copy
from typing import Any

API_TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

_CONTRACT_UNITS = """\
  - code: HN
    name: UBND thành phố Hà Nội
    head: {name: Nguyễn Văn An, telegram_chat_id: 900}
  - code: HN-LB
    name: UBND quận Long Biên
    parent: HN
    head: {name: Lê Thị Bình, telegram_chat_id: 901}
"""
_CONTRACT_RECIPIENTS = """\
  - {name: Sở Nội vụ Hà Nội, telegram_chat_id: 950, scope: HN}
"""

HN_BD = """\
  - code: HN-BD
    name: UBND quận Ba Đình
    parent: HN
"""


def units_yaml(*more_units: str, recipients: bool = True) -> str:
    """The contract's units file, with `more_units` (YAML list items) after its two units;
    without its digest recipient when `recipients` is False."""
    text = "units:\n" + _CONTRACT_UNITS + "".join(more_units)
    if recipients:
        text += "digest_recipients:\n" + _CONTRACT_RECIPIENTS
    return text


UNITS_YAML = units_yaml()

CASE_BODY: dict[str, Any] = {
    "case_code": "000.00.12.H26-261122-0001",
    "unit_code": "HN-LB",
    "procedure": {"code": "1.001193", "name": "Đăng ký khai sinh", "field": "Hộ tịch"},
    "officer": {"code": "CB-017", "name": "Nguyễn Thị Lan"},
    "citizen": {
        "name": "Trần Văn Minh",
        "phone": "0912345678",
        "telegram_chat_id": None,
        "zalo_user_id": None,
        "locale": "vi",
    },
    "status": "received",
    "received_at": "2026-11-20T08:05:00+07:00",
    "due_at": "2026-11-25T17:00:00+07:00",
    "resolved_at": None,
    "delay": None,
}


def case_body(case_code: str | None = None, **changes: Any) -> dict[str, Any]:
    """The contract's example body, with top-level fields replaced by `changes`."""
    body = copy.deepcopy(CASE_BODY)
    if case_code is not None:
        body["case_code"] = case_code
    body.update(changes)
    return body

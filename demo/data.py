"""Sample data for `sipas-bot demo`: Hà Nội units, real-looking procedures and seeded random
cases over the last weeks. Every person, phone number and chat id here is made up.

Pure functions of a `random.Random` and an instant, so a seed gives the same data every run
and the cases stay in the past of "now" whatever day the demo runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
WEEKS = 8
CASES = 300


@dataclass(frozen=True)
class DemoUnit:
    code: str
    name: str
    parent: str | None
    agency: str  # the one-stop system's agency prefix of its case codes
    head: str
    head_chat_id: int
    procedures: tuple[str, ...]  # codes from PROCEDURES this unit handles
    weight: int  # how many cases it gets, relative to the others


@dataclass(frozen=True)
class DemoProcedure:
    code: str  # in the national public service portal's format (sample codes)
    name: str
    field: str
    days: int  # working days the regulations allow


PROCEDURES = {
    p.code: p
    for p in (
        DemoProcedure("1.001193", "Đăng ký khai sinh", "Hộ tịch", 1),
        DemoProcedure("1.000656", "Đăng ký khai tử", "Hộ tịch", 1),
        DemoProcedure("1.000894", "Đăng ký kết hôn", "Hộ tịch", 3),
        DemoProcedure(
            "2.000815", "Chứng thực bản sao từ bản chính giấy tờ, văn bản", "Chứng thực", 1
        ),
        DemoProcedure("2.000884", "Chứng thực chữ ký trong giấy tờ, văn bản", "Chứng thực", 1),
        DemoProcedure("1.009974", "Cấp giấy phép xây dựng nhà ở riêng lẻ", "Xây dựng", 15),
        DemoProcedure("1.009978", "Cấp giấy phép xây dựng công trình", "Xây dựng", 20),
        DemoProcedure("2.000720", "Đăng ký thành lập hộ kinh doanh", "Hộ kinh doanh", 3),
        DemoProcedure("2.000488", "Cấp phiếu lý lịch tư pháp", "Lý lịch tư pháp", 10),
        DemoProcedure("1.001978", "Giải quyết hưởng trợ cấp thất nghiệp", "Việc làm", 20),
        DemoProcedure("1.005135", "Xác nhận người có công với cách mạng", "Người có công", 12),
    )
}
_CIVIL = ("1.001193", "1.000656", "1.000894", "2.000815", "2.000884")
_DISTRICT = ("1.000894", "2.000815", "1.009974", "2.000720")

UNITS = (
    DemoUnit("HN", "UBND thành phố Hà Nội", None, "000.00.00.H26", "Nguyễn Văn An", 900, (), 0),
    DemoUnit(
        "HN-LB", "UBND quận Long Biên", "HN", "000.00.12.H26", "Lê Thị Bình", 901, _DISTRICT, 6
    ),
    DemoUnit(
        "HN-BTL",
        "UBND quận Bắc Từ Liêm",
        "HN",
        "000.00.21.H26",
        "Phạm Quốc Cường",
        902,
        _DISTRICT,
        5,
    ),
    DemoUnit(
        "HN-HBT",
        "UBND quận Hai Bà Trưng",
        "HN",
        "000.00.05.H26",
        "Đỗ Thu Hà",
        903,
        _DISTRICT,
        5,
    ),
    DemoUnit(
        "HN-TT", "UBND huyện Thanh Trì", "HN", "000.00.16.H26", "Vũ Đức Dũng", 904, _DISTRICT, 3
    ),
    DemoUnit(
        "HN-STP",
        "Sở Tư pháp",
        "HN",
        "000.00.40.H26",
        "Hoàng Minh Đức",
        905,
        ("2.000488",),
        4,
    ),
    DemoUnit(
        "HN-SXD",
        "Sở Xây dựng",
        "HN",
        "000.00.41.H26",
        "Bùi Thị Giang",
        906,
        ("1.009978",),
        2,
    ),
    DemoUnit(
        "HN-SLD",
        "Sở Lao động - Thương binh và Xã hội",
        "HN",
        "000.00.42.H26",
        "Trịnh Văn Hải",
        907,
        ("1.001978", "1.005135"),
        4,
    ),
    DemoUnit(
        "HN-LB-BD",
        "UBND phường Bồ Đề",
        "HN-LB",
        "000.12.01.H26",
        "Ngô Thị Hương",
        911,
        _CIVIL,
        6,
    ),
    DemoUnit(
        "HN-LB-NT",
        "UBND phường Ngọc Thụy",
        "HN-LB",
        "000.12.02.H26",
        "Đặng Văn Khoa",
        912,
        _CIVIL,
        4,
    ),
    DemoUnit(
        "HN-TT-TTO",
        "UBND xã Tả Thanh Oai",
        "HN-TT",
        "000.16.01.H26",
        "Mai Thị Loan",
        913,
        _CIVIL,
        3,
    ),
)
DIGEST_RECIPIENTS = ({"name": "Sở Nội vụ Hà Nội", "telegram_chat_id": 950, "scope": "HN"},)

_FAMILY: tuple[str, ...] = (
    "Nguyễn",
    "Trần",
    "Lê",
    "Phạm",
    "Hoàng",
    "Huỳnh",
    "Phan",
    "Vũ",
    "Võ",
    "Đặng",
    "Bùi",
)
_FAMILY += ("Đỗ", "Hồ", "Ngô", "Dương", "Lý")
_MIDDLE = ("Văn", "Thị", "Hữu", "Đức", "Minh", "Thu", "Ngọc", "Quang", "Thanh", "Xuân")
_GIVEN: tuple[str, ...] = (
    "An",
    "Bình",
    "Chi",
    "Dũng",
    "Giang",
    "Hà",
    "Hải",
    "Hạnh",
    "Hiếu",
    "Hoa",
    "Hùng",
)
_GIVEN += ("Hương", "Khánh", "Lan", "Linh", "Long", "Mai", "Minh", "Nam", "Nga", "Phúc")
_GIVEN += ("Quân", "Sơn", "Tâm", "Thảo", "Trang", "Tuấn", "Vy", "Yến")
DELAY_REASONS = (
    "Chờ xác minh thông tin từ cơ quan liên quan",
    "Hồ sơ cần lấy ý kiến thẩm định của Sở chuyên ngành",
    "Cơ sở dữ liệu hộ tịch điện tử gián đoạn, chưa cập nhật được",
    "Cần kiểm tra thực địa công trình",
)


def units_file() -> dict[str, Any]:
    """The sample units in the units-file shape of docs/contract.md section 5."""
    units: list[dict[str, Any]] = []
    for unit in UNITS:
        entry: dict[str, Any] = {
            "code": unit.code,
            "name": unit.name,
            "head": {"name": unit.head, "telegram_chat_id": unit.head_chat_id},
        }
        if unit.parent:
            entry["parent"] = unit.parent
        units.append(entry)
    return {"units": units, "digest_recipients": list(DIGEST_RECIPIENTS)}


def person_name(rng: random.Random) -> str:
    return f"{rng.choice(_FAMILY)} {rng.choice(_MIDDLE)} {rng.choice(_GIVEN)}"


def phone_number(rng: random.Random) -> str:
    return rng.choice(("09", "03", "08")) + "".join(str(rng.randrange(10)) for _ in range(8))


def officers(unit: DemoUnit) -> list[dict[str, str]]:
    """Two or three desk officers per unit, with codes unique across units."""
    count = 2 + len(unit.code) % 2
    rng = random.Random(unit.code)
    suffix = unit.code.replace("HN-", "").replace("HN", "TP")
    return [{"code": f"CB-{suffix}-{n:02d}", "name": person_name(rng)} for n in range(count)]


def add_working_days(start: datetime, days: int) -> datetime:
    """The promised return date: `days` working days later (weekends skipped), 17:00 local."""
    day = start.astimezone(HANOI)
    remaining = max(days, 0)
    while remaining:
        day += timedelta(days=1)
        if day.weekday() < 5:
            remaining -= 1
    return datetime.combine(day.date(), time(17, 0), HANOI)


def _received_at(rng: random.Random, now: datetime) -> datetime:
    """A working-day instant in office hours within the last WEEKS weeks."""
    local_now = now.astimezone(HANOI)
    while True:
        day = local_now.date() - timedelta(days=rng.randrange(WEEKS * 7))
        if day.weekday() >= 5:
            continue
        minute = rng.randrange(8 * 60, 16 * 60 + 30)
        moment = datetime.combine(day, time(minute // 60, minute % 60), HANOI)
        if moment < local_now - timedelta(minutes=5):
            return moment


def _iso(moment: datetime) -> str:
    return moment.astimezone(HANOI).isoformat(timespec="seconds")


def sample_case(
    rng: random.Random, now: datetime, sequence: int, unit: DemoUnit | None = None
) -> dict[str, Any]:
    """One intake body (the API's JSON) with a plausible history as of `now`."""
    unit = unit or rng.choices(UNITS, weights=[u.weight for u in UNITS])[0]
    procedure = PROCEDURES[rng.choice(unit.procedures)]
    received = _received_at(rng, now)
    due = add_working_days(received, procedure.days)
    citizen: dict[str, Any] = {
        "name": person_name(rng),
        "phone": phone_number(rng) if rng.random() < 0.9 else None,
        "telegram_chat_id": None,
        "zalo_user_id": None,
        "locale": "en" if rng.random() < 0.03 else "vi",
    }
    body: dict[str, Any] = {
        "case_code": f"{unit.agency}-{received:%y%m%d}-{sequence:04d}",
        "unit_code": unit.code,
        "procedure": {"code": procedure.code, "name": procedure.name, "field": procedure.field},
        "officer": rng.choice(officers(unit)),
        "citizen": citizen,
        "status": "received",
        "received_at": _iso(received),
        "due_at": _iso(due),
        "resolved_at": None,
        "delay": None,
    }
    _set_outcome(rng, now, body, received, due)
    return body


def _set_outcome(
    rng: random.Random, now: datetime, body: dict[str, Any], received: datetime, due: datetime
) -> None:
    """Mostly on time; some late (half of them with an apology first), delayed or rejected."""
    roll = rng.random()
    if roll < 0.04:
        body["status"] = "withdrawn"
        return
    if roll < 0.09:
        body["status"] = "rejected"
        body["resolved_at"] = _iso(min(received + (due - received) / 2, now))
        return
    if due > now:  # still within its time: in progress, or done early
        if rng.random() < 0.4:
            body["status"] = "resolved"
            body["resolved_at"] = _iso(received + (now - received) * rng.uniform(0.3, 0.9))
        return
    reason = rng.choice(DELAY_REASONS)
    if roll < 0.15 and now - due < timedelta(days=21):  # late, apologised, new date ahead
        body["status"] = "delayed"
        new_due = add_working_days(max(due, now), rng.randint(2, 7))
        body["delay"] = {"new_due_at": _iso(new_due), "reason": reason}
        return
    if roll < 0.24:  # resolved late, half of them after an apology and a new date
        latest = due
        if roll < 0.195:
            latest = add_working_days(due, rng.randint(2, 5))
            body["delay"] = {"new_due_at": _iso(latest), "reason": reason}
        body["status"] = "resolved"
        body["resolved_at"] = _iso(min(latest + timedelta(hours=rng.randint(18, 120)), now))
        return
    if roll < 0.27:
        return  # still `received`, past its date: an overdue case
    body["status"] = "resolved"
    body["resolved_at"] = _iso(received + (due - received) * rng.uniform(0.2, 1.0))


def sample_cases(rng: random.Random, now: datetime, count: int = CASES) -> list[dict[str, Any]]:
    """`count` cases, oldest first, so the history reads in order."""
    cases = [sample_case(rng, now, sequence) for sequence in range(1, count + 1)]
    return sorted(cases, key=lambda case: str(case["received_at"]))


def new_case(now: datetime) -> dict[str, Any]:
    """The case the printed `curl` posts: a birth registration just received at a ward."""
    unit = next(u for u in UNITS if u.code == "HN-LB-BD")
    procedure = PROCEDURES["1.001193"]
    received = now.astimezone(HANOI).replace(second=0, microsecond=0)
    return {
        "case_code": f"{unit.agency}-{received:%y%m%d}-9001",
        "unit_code": unit.code,
        "procedure": {"code": procedure.code, "name": procedure.name, "field": procedure.field},
        "officer": officers(unit)[0],
        "citizen": {"name": "Trần Văn Minh", "phone": "0912345678", "locale": "vi"},
        "status": "received",
        "received_at": _iso(received),
        "due_at": _iso(add_working_days(received, procedure.days)),
    }

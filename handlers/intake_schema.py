"""The case intake body of docs/contract.md section 4, validated field by field.

The same validation serves the HTTP API and the CSV import, so a row and a request are
judged alike. Every problem is reported under its dotted field path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetPydanticSchema,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from handlers.errors import InvalidInput
from storage.models import CaseStatus

# Text a database keeps as given (`storable_text`): every text field has a pattern, checked
# by pydantic's core, which also refuses a lone surrogate (it is not Unicode) for any field
# with a pattern. A validator in Python for each field cost a quarter of a body's validation.
_STORABLE = r"^[^\x00]*$"
Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255, pattern=_STORABLE),
]
LongText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=500, pattern=_STORABLE),
]
Code = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^\s/\x00]+$"),
]
# A case code is a URL path segment: `.` and `..` are segments a URL resolves away, so GET
# /api/v1/cases/.. could never reach such a case. Both checks are patterns pydantic's core runs
# (a validator in Python for each case was a tenth of a body's validation).
_NOT_ONLY_DOTS = r"^\.*[^.]"
CaseCode = Annotated[
    str,
    GetPydanticSchema(
        lambda _source, _handler: core_schema.chain_schema(
            [
                core_schema.str_schema(
                    strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^\s/\x00]+$"
                ),
                core_schema.str_schema(pattern=_NOT_ONLY_DOTS),
            ]
        )
    ),
]
# Telegram chat ids are integers (negative for groups); accept them as numbers or strings.
ChatId = Annotated[str, StringConstraints(pattern=r"^-?\d{1,20}$")]
ZaloId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=_STORABLE),
]

_PHONE_SEPARATORS = re.compile(r"[\s.\-()]")


def normalize_phone(raw: str) -> str:
    """Vietnamese numbers in one form: `0912345678` (from +84 912..., 84912..., 0912 345 678)."""
    digits = _PHONE_SEPARATORS.sub("", raw)
    if digits.startswith("+84"):
        digits = "0" + digits[3:]
    elif digits.startswith("84") and len(digits) == 11:
        digits = "0" + digits[2:]
    if not re.fullmatch(r"0\d{9,10}", digits):
        raise ValueError("not a Vietnamese phone number (10 digits starting with 0, or +84...)")
    return digits


_NOT_STORABLE = "contains a NUL character or a lone surrogate"


def storable_text(text: str) -> bool:
    """False for text no database keeps as given: a NUL character (PostgreSQL refuses it) or
    a lone surrogate (not Unicode; it cannot be encoded as UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Strict(BaseModel):
    # Every text field is of a type above (or normalised, as the phone): see `_STORABLE`.
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class ProcedureIn(_Strict):
    code: Code
    name: LongText
    field: Text | None = None


class OfficerIn(_Strict):
    code: Code
    name: Text | None = None


class CitizenIn(_Strict):
    name: Text | None = None
    phone: str | None = None
    telegram_chat_id: ChatId | None = None
    zalo_user_id: ZaloId | None = None
    locale: Literal["vi", "en"] | None = None

    @field_validator("telegram_chat_id", mode="before")
    @classmethod
    def _chat_id_as_text(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        return str(value) if isinstance(value, int) else value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else normalize_phone(value)


def _moment_schema(_source: object, _handler: object) -> core_schema.CoreSchema:
    """A moment: ISO 8601 text (only that: pydantic would read `2026` as seconds since 1970),
    or an aware datetime from a Python caller, read with its offset. Checked in pydantic's core
    alone: validators in Python for these three fields were a third of a body's validation."""
    written = core_schema.union_schema(
        [
            core_schema.str_schema(
                strip_whitespace=True, pattern=r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}"
            ),
            core_schema.is_instance_schema(datetime),
        ],
        custom_error_type=_NOT_ISO,
        custom_error_message="must be an ISO 8601 date and time",
    )
    return core_schema.chain_schema([written, core_schema.datetime_schema(tz_constraint="aware")])


_NOT_ISO = "not_iso_datetime"
Moment = Annotated[datetime, GetPydanticSchema(_moment_schema)]


class DelayIn(_Strict):
    new_due_at: Moment
    reason: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=1000, pattern=_STORABLE),
    ]


class CaseIn(_Strict):
    """One case as the one-stop system reports it."""

    case_code: CaseCode
    unit_code: Code
    procedure: ProcedureIn
    officer: OfficerIn | None = None
    citizen: CitizenIn = Field(default_factory=CitizenIn)
    status: CaseStatus
    received_at: Moment
    due_at: Moment
    resolved_at: Moment | None = None
    delay: DelayIn | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CaseIn:
        problems: dict[str, str] = {}
        if self.due_at < self.received_at:
            problems["due_at"] = "is before received_at"
        problems.update(_required_by_status(self.status, self.resolved_at, self.delay))
        if self.resolved_at is not None and self.resolved_at < self.received_at:
            problems["resolved_at"] = "is before received_at"
        delay = self.delay
        if (
            delay is not None
            and self.status == CaseStatus.DELAYED
            and delay.new_due_at <= self.due_at
        ):
            problems["delay.new_due_at"] = "must be later than due_at"
        if problems:
            raise _FieldProblems(problems)
        return self

    def fingerprint(self) -> str:
        """A stable hash of the body: the same case posted twice hashes the same.

        SHA-256 of the model's own JSON (fields in their fixed order), in URL-safe base64: 43
        characters. pydantic writes that JSON in a fifth of the time the earlier form took
        (`fingerprint_v1`, 17 µs a case, a tenth of a batch's cost in the server)."""
        digest = hashlib.sha256(self.model_dump_json().encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def fingerprint_v1(self) -> str:
        """The hash stored for cases taken before `fingerprint`: 64 hex digits of SHA-256 of
        the body's JSON with sorted keys. Kept so that such a case posted again is still
        known as a replay."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def hashes_to(self, stored: str, fingerprint: str) -> bool:
        """Whether a case stored with hash `stored` had this body (`fingerprint` is ours)."""
        if len(stored) == _V1_LENGTH:
            return stored == self.fingerprint_v1()
        return stored == fingerprint


_V1_LENGTH = 64  # hex digits of SHA-256; `fingerprint` is 43 characters


def _required_by_status(status: object, resolved_at: object, delay: object) -> dict[str, str]:
    """The fields a status needs; also checked on the raw body when other fields are bad."""
    problems: dict[str, str] = {}
    if status == CaseStatus.RESOLVED and resolved_at is None:
        problems["resolved_at"] = "is required when status is resolved"
    if status == CaseStatus.DELAYED and delay is None:
        problems["delay"] = "is required when status is delayed (new_due_at and reason)"
    return problems


class _FieldProblems(ValueError):
    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


# A good value of each field, for messages that say what is allowed.
EXAMPLES = {
    "case_code": "000.00.12.H26-261122-0001",
    "unit_code": "HN-LB",
    "procedure.code": "1.001193",
    "officer.code": "CB-017",
    "citizen.telegram_chat_id": "123456789",
    "citizen.zalo_user_id": "5678901234",
}
_DATE_EXAMPLE = "2026-11-20T08:05:00+07:00"
_OFFSET_EXAMPLES = {"delay.new_due_at": "2026-11-28T17:00:00+07:00"}
# Times in the future by more than this are refused: the one-stop system's clock may run a
# little ahead, but a case cannot have been received or resolved next year.
CLOCK_SKEW = timedelta(minutes=5)


def _describe(error: Any) -> tuple[str, str]:
    """pydantic's error for one field, said as the project says it: what is allowed, and an
    example; never the library's wording (`String should match pattern ...`)."""
    path = ".".join(str(part) for part in error["loc"]) or "body"
    kind = error["type"]
    context = error.get("ctx") or {}
    example = f", e.g. {EXAMPLES[path]}" if path in EXAMPLES else ""
    if kind == "missing":
        return path, "is required"
    if kind == "extra_forbidden":
        return path, "is not a known field"
    if kind == "enum":
        allowed = ", ".join(status.value for status in CaseStatus)
        return path, f"must be one of {allowed}"
    if kind == "string_unicode" or (
        kind == "string_pattern_mismatch" and "\x00" in str(error.get("input", ""))
    ):
        return path, _NOT_STORABLE
    if kind == _NOT_ISO:
        return path, f"must be an ISO 8601 date and time, e.g. {_DATE_EXAMPLE}"
    if kind == "timezone_aware":
        return path, f"needs a time zone offset, e.g. {_OFFSET_EXAMPLES.get(path, _DATE_EXAMPLE)}"
    if kind == "string_pattern_mismatch" and context.get("pattern") == _NOT_ONLY_DOTS:
        return path, "must not be only dots"
    if kind == "string_pattern_mismatch":
        if path.endswith("telegram_chat_id"):
            return path, f"must be a number (a Telegram chat id){example}"
        return path, f"must not contain spaces or '/'{example}"
    if kind == "string_too_short":
        return path, f"must not be empty{example}"
    if kind == "string_too_long":
        return path, f"is longer than {context.get('max_length')} characters{example}"
    if kind == "string_type":
        return path, f"must be text{example}"
    if kind == "literal_error":
        return path, f"must be {context.get('expected', '').replace(chr(39), '')}"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return path, "must be an object with its fields, as in the API's example"
    if kind.startswith(("datetime", "date")):
        return path, f"is not a date and time; write it like {_DATE_EXAMPLE}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return path, message


def times_ahead(body: CaseIn, now: datetime) -> dict[str, str]:
    """The times that cannot have happened yet (received or resolved in the future)."""
    problems: dict[str, str] = {}
    for name in ("received_at", "resolved_at"):
        moment: datetime | None = getattr(body, name)
        if moment is not None and moment > now + CLOCK_SKEW:
            problems[name] = (
                f"{moment.isoformat()} is in the future (more than "
                f"{int(CLOCK_SKEW.total_seconds() // 60)} minutes ahead of this server's clock); "
                "send the time it happened"
            )
    return problems


def parse_case(data: object) -> CaseIn:
    """Validates an intake body; raises InvalidInput naming every bad field."""
    if not isinstance(data, dict):
        raise InvalidInput({"body": "must be a JSON object"})
    try:
        return CaseIn.model_validate(data)
    except ValidationError as exc:
        fields: dict[str, str] = {}
        for error in exc.errors():
            context = error.get("ctx") or {}
            cause = context.get("error")
            if isinstance(cause, _FieldProblems):
                fields.update(cause.problems)
                continue
            path, message = _describe(error)
            fields.setdefault(path, message)
        # The model's own cross-field checks do not run when a field is bad; these do.
        required = _required_by_status(
            data.get("status"), data.get("resolved_at"), data.get("delay")
        )
        for path, message in required.items():
            fields.setdefault(path, message)
        raise InvalidInput(fields) from None

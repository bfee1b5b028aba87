"""Bulk intake from a CSV file (`sipas-bot cases import`): each row becomes the same intake
body the API takes and goes through the same `parse_case` and `cases_posted`.

The header is checked before any row, so a misnamed column stops the import instead of
rejecting every row. Problems are reported per row under the CSV column names, with line
numbers as an editor shows them (the header is line 1).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.errors import Conflict, DomainError, InvalidInput
from handlers.intake import ReferenceIds, cases_posted
from handlers.intake_schema import CaseIn, parse_case
from handlers.policy import SurveyPolicy

COLUMNS = (
    "case_code",
    "unit_code",
    "procedure_code",
    "procedure_name",
    "procedure_field",
    "officer_code",
    "officer_name",
    "citizen_name",
    "citizen_phone",
    "citizen_telegram_chat_id",
    "citizen_zalo_user_id",
    "citizen_locale",
    "status",
    "received_at",
    "due_at",
    "resolved_at",
    "delay_new_due_at",
    "delay_reason",
)
REQUIRED = frozenset(
    (
        "case_code",
        "unit_code",
        "procedure_code",
        "procedure_name",
        "status",
        "received_at",
        "due_at",
    )
)
# Intake field paths back to the column a person fixes in the spreadsheet.
_COLUMN_OF = {
    "procedure.code": "procedure_code",
    "procedure.name": "procedure_name",
    "procedure.field": "procedure_field",
    "procedure": "procedure_code",
    "officer.code": "officer_code",
    "officer.name": "officer_name",
    "citizen.name": "citizen_name",
    "citizen.phone": "citizen_phone",
    "citizen.telegram_chat_id": "citizen_telegram_chat_id",
    "citizen.zalo_user_id": "citizen_zalo_user_id",
    "citizen.locale": "citizen_locale",
    "delay.new_due_at": "delay_new_due_at",
    "delay.reason": "delay_reason",
    "delay": "delay_new_due_at",
}
_NAIVE_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_DELIMITERS = (",", ";", "\t")


@dataclass(frozen=True)
class CsvRow:
    line: int  # where the row starts in the file; the header is line 1
    values: dict[str, str | None]  # by column; an empty cell is None


@dataclass(frozen=True)
class Rejection:
    line: int
    fields: dict[str, str]

    def lines(self) -> list[str]:
        return [f"line {self.line}: {name}: {reason}" for name, reason in self.fields.items()]


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.created + self.updated + self.unchanged

    def summary(self) -> str:
        return (
            f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{len(self.rejected)} rejected"
        )


def decode(data: bytes) -> str:
    """UTF-8 with or without the BOM Excel writes; anything else is refused, not guessed."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            {
                "file": f"is not UTF-8 text (byte {exc.start}); in Excel save it as "
                "'CSV UTF-8 (Comma delimited)'"
            }
        ) from None


def _delimiter(header_line: str) -> str:
    # Excel in a Vietnamese (or any comma-decimal) locale writes `;`; the header says which.
    return max(_DELIMITERS, key=header_line.count)


def read_rows(text: str) -> Iterator[CsvRow]:
    """Rows of the CSV text; raises InvalidInput for a bad header before yielding any row."""
    first_line = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(first_line))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInput({"file": "is empty; the first line must name the columns"}) from None
    columns = [name.strip().lower() for name in header]
    _check_header(columns)
    line = reader.line_num + 1
    for cells in reader:
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue  # blank lines, and the empty rows spreadsheets leave at the end
        if len(cells) != len(columns):
            yield CsvRow(start, {"__shape__": f"has {len(cells)} cells, the header {len(columns)}"})
            continue
        values = {name: (cell.strip() or None) for name, cell in zip(columns, cells, strict=True)}
        yield CsvRow(start, values)


def _check_header(columns: list[str]) -> None:
    problems: dict[str, str] = {}
    unknown = [name for name in columns if name not in COLUMNS]
    if unknown:
        problems["unknown columns"] = ", ".join(repr(name) for name in unknown) + (
            f"; the columns are: {', '.join(COLUMNS)}"
        )
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        problems["duplicated columns"] = ", ".join(duplicated)
    missing = [name for name in COLUMNS if name in REQUIRED and name not in columns]
    if missing:
        problems["missing columns"] = ", ".join(missing)
    if problems:
        raise InvalidInput(problems, "the header of the CSV file is not right")


def _with_timezone(value: str | None, zone: tzinfo) -> str | None:
    """Spreadsheets write local times without an offset; read those in the service's zone."""
    if value is None or not _NAIVE_ISO.match(value):
        return value
    return datetime.fromisoformat(value).replace(tzinfo=zone).isoformat()


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def row_to_body(values: dict[str, str | None], zone: tzinfo) -> dict[str, Any]:
    """The API's intake body for one row: columns nest as `procedure`, `officer`, `citizen`."""
    cell = values.get
    body: dict[str, Any] = _present(
        {
            "case_code": cell("case_code"),
            "unit_code": cell("unit_code"),
            "status": cell("status"),
            "received_at": _with_timezone(cell("received_at"), zone),
            "due_at": _with_timezone(cell("due_at"), zone),
            "resolved_at": _with_timezone(cell("resolved_at"), zone),
        }
    )
    body["procedure"] = _present(
        {
            "code": cell("procedure_code"),
            "name": cell("procedure_name"),
            "field": cell("procedure_field"),
        }
    )
    if cell("officer_code") or cell("officer_name"):
        body["officer"] = _present({"code": cell("officer_code"), "name": cell("officer_name")})
    body["citizen"] = _present(
        {
            "name": cell("citizen_name"),
            "phone": cell("citizen_phone"),
            "telegram_chat_id": cell("citizen_telegram_chat_id"),
            "zalo_user_id": cell("citizen_zalo_user_id"),
            "locale": cell("citizen_locale"),
        }
    )
    if cell("delay_new_due_at") or cell("delay_reason"):
        body["delay"] = _present(
            {
                "new_due_at": _with_timezone(cell("delay_new_due_at"), zone),
                "reason": cell("delay_reason"),
            }
        )
    return body


def _by_column(fields: dict[str, str]) -> dict[str, str]:
    return {_COLUMN_OF.get(path, path): reason for path, reason in fields.items()}


def _rejection(line: int, exc: DomainError) -> Rejection:
    if isinstance(exc, InvalidInput):
        return Rejection(line, _by_column(exc.fields))
    if isinstance(exc, Conflict):
        return Rejection(line, {"status": exc.message})
    return Rejection(line, {"row": exc.message})


async def rows_imported(
    session: AsyncSession,
    rows: Sequence[CsvRow],
    now: datetime,
    policy: SurveyPolicy,
    report: ImportReport,
    *,
    channels: Sequence[str] = (),
    references: ReferenceIds | None = None,
) -> None:
    """Takes rows in, in file order, each judged alone exactly like a `POST /api/v1/cases`:
    a rejected row leaves no trace behind and does not stop the others."""
    bodies: list[tuple[int, CaseIn]] = []
    rejected: list[Rejection] = []
    for row in rows:
        try:
            if "__shape__" in row.values:
                raise InvalidInput({"row": str(row.values["__shape__"])})
            bodies.append((row.line, parse_case(row_to_body(row.values, policy.timezone))))
        except DomainError as exc:
            rejected.append(_rejection(row.line, exc))
    outcomes = await cases_posted(
        session,
        [body for _line, body in bodies],
        now,
        policy,
        channels=channels,
        references=references,
    )
    for (line, _body), outcome in zip(bodies, outcomes, strict=True):
        if isinstance(outcome, DomainError):
            rejected.append(_rejection(line, outcome))
        elif outcome.created:
            report.created += 1
        elif outcome.changed:
            report.updated += 1
        else:
            report.unchanged += 1
    report.rejected.extend(sorted(rejected, key=lambda rejection: rejection.line))

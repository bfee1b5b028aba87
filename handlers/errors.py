"""The one family of domain errors; bot/ maps them to HTTP answers and chat texts in one place."""

from __future__ import annotations

from collections.abc import Mapping


class DomainError(Exception):
    """Something the caller asked for cannot be done; `code` is stable, `message` is for people."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(DomainError):
    """The input breaks a rule; `fields` maps each bad field (dotted path) to what is wrong."""

    code = "invalid_input"

    def __init__(self, fields: Mapping[str, str], message: str | None = None) -> None:
        names = ", ".join(sorted(fields))
        super().__init__(message or f"invalid value for {names}")
        self.fields = dict(fields)


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    """An impossible change of state, e.g. reopening a resolved case."""

    code = "invalid_transition"

"""Courtesy messages when a case is resolved (Quảng Ninh's practice): congratulations after a
birth or marriage registration, condolences after a death registration.

Which procedure earns which text is data, in ``handlers/data/courtesy.yaml``; a procedure no
enabled rule matches gets nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.chat import say
from handlers.policy import SurveyPolicy
from handlers.rendering import fold, payload
from handlers.texts import DEFAULT_LOCALE, catalogue, t
from storage.models import Case, CaseStatus, Citizen, Priority, Procedure, Unit
from storage.repositories import citizens as citizen_repo

log = logging.getLogger(__name__)

_RULES_FILE = ("data", "courtesy.yaml")


class CourtesyRulesError(ValueError):
    """The courtesy rules are malformed; the message names the rule and the problem."""


def _words(text: str) -> tuple[str, ...]:
    """Folded words: "Đăng ký khai tử" reads ("dang", "ky", "khai", "tu")."""
    return tuple(re.findall(r"[^\W_]+", fold(text)))


def _contains(words: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    # Whole words, so "khai tu" never matches inside a longer word such as "khai tuyen".
    size = len(phrase)
    return any(words[i : i + size] == phrase for i in range(len(words) - size + 1))


@dataclass(frozen=True)
class CourtesyRule:
    """One courtesy text and the procedures it is for; phrases are stored as folded words."""

    template: str
    procedure_keywords: tuple[tuple[str, ...], ...]
    fields: tuple[tuple[str, ...], ...] = ()
    exclude_keywords: tuple[tuple[str, ...], ...] = ()
    enabled: bool = True

    def matches(self, procedure_name: str, field: str | None) -> bool:
        if not self.enabled:
            return False
        # A procedure posted without a field is judged on its name alone.
        if self.fields and field and _words(field) not in self.fields:
            return False
        name = _words(procedure_name)
        return any(_contains(name, k) for k in self.procedure_keywords) and not any(
            _contains(name, k) for k in self.exclude_keywords
        )


class _RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    template: str
    procedure_keywords: list[str] = Field(min_length=1)
    fields: list[str] = Field(default_factory=list)
    exclude_keywords: list[str] = Field(default_factory=list)
    enabled: bool = True

    @field_validator("template")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if f"courtesy.{value}" not in catalogue(DEFAULT_LOCALE):
            raise ValueError(f"no text courtesy.{value} in the {DEFAULT_LOCALE} catalogue")
        return value


class _RulesIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    rules: list[_RuleIn]


def _phrases(values: Iterable[str], where: str) -> tuple[tuple[str, ...], ...]:
    phrases = tuple(_words(value) for value in values)
    if any(not phrase for phrase in phrases):
        raise CourtesyRulesError(f"{where}: a keyword has no letters or digits")
    return phrases


def parse_rules(raw: object, source: str = "courtesy rules") -> tuple[CourtesyRule, ...]:
    """Rules from parsed YAML (``{"rules": [...]}``); keywords may be written with diacritics."""
    if not isinstance(raw, dict):
        raise CourtesyRulesError(f"{source}: the top level must be a mapping with a `rules` list")
    try:
        parsed = _RulesIn.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise CourtesyRulesError(f"{source}: {problems}") from None
    rules: list[CourtesyRule] = []
    for index, rule in enumerate(parsed.rules):
        where = f"{source}: rules[{index}] ({rule.template})"
        rules.append(
            CourtesyRule(
                template=rule.template,
                procedure_keywords=_phrases(rule.procedure_keywords, where),
                fields=_phrases(rule.fields, where),
                exclude_keywords=_phrases(rule.exclude_keywords, where),
                enabled=rule.enabled,
            )
        )
    return tuple(rules)


def load_rules(text: str, source: str = "courtesy rules") -> tuple[CourtesyRule, ...]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CourtesyRulesError(f"{source}: not valid YAML: {exc}") from exc
    return parse_rules(raw, source)


@cache
def default_rules() -> tuple[CourtesyRule, ...]:
    """The rules shipped in ``handlers/data/courtesy.yaml``."""
    text = resources.files("handlers").joinpath(*_RULES_FILE).read_text(encoding="utf-8")
    return load_rules(text, "courtesy.yaml")


def template_for(
    procedure_name: str, field: str | None, rules: Sequence[CourtesyRule] | None = None
) -> str | None:
    """The courtesy template for a procedure (the first enabled rule that matches), or None."""
    for rule in default_rules() if rules is None else rules:
        if rule.matches(procedure_name, field):
            return rule.template
    return None


async def case_resolved(
    session: AsyncSession,
    case: Case,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
    *,
    rules: Sequence[CourtesyRule] | None = None,
) -> bool:
    """A case just resolved: queues its courtesy message, if any; True when one was queued."""
    if case.status != CaseStatus.RESOLVED or case.citizen_id is None:
        return False  # a rejection or a withdrawal is no occasion for congratulations
    procedure = await session.get(Procedure, case.procedure_id)
    assert procedure is not None  # foreign key
    template = template_for(procedure.name, procedure.field, rules)
    if template is None:
        return False
    citizen = await session.get(Citizen, case.citizen_id)
    if citizen is None or citizen.erased_at is not None or citizen.opted_out_at is not None:
        return False  # no consent to write to them (or nobody left to write to)
    contact = await citizen_repo.active_contact(session, citizen.id, channels)
    if contact is None:
        return False
    unit = await session.get(Unit, case.unit_id)
    assert unit is not None  # foreign key
    text = t(f"courtesy.{template}", citizen.locale, unit_name=unit.name)
    queued = await say(
        session,
        contact.channel,
        contact.address,
        payload(text),
        # Condolences at midnight would be no courtesy: quiet hours hold it until morning.
        policy.sendable_at(now),
        priority=Priority.NOTICE,
        dedupe_key=f"courtesy:{case.id}",
        case_id=case.id,
    )
    if queued:
        log.info("courtesy message %s queued for case %s", template, case.id)
    return queued

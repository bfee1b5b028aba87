"""Which answers open an escalation, and how serious it is (rules in data/escalation_rules.yaml)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from handlers.questionnaire import Questionnaire
from handlers.rendering import fold

# The severity of a report of an informal payment (Chỉ thị 10/CT-TTg); the rest come from data.
CRITICAL = "critical"


@dataclass(frozen=True)
class Trigger:
    reason: str  # low_rating | informal_payment | complaint | late
    severity: str


@dataclass(frozen=True)
class Rules:
    low_rating_max: int
    low_rating_severity: str
    informal_payment_severity: str
    complaint_rating_max: int
    complaint_severity: str
    complaint_keywords: tuple[str, ...]
    late_severity: str


@cache
def default_rules() -> Rules:
    text = resources.files("handlers").joinpath("data/escalation_rules.yaml").read_text("utf-8")
    return parse_rules(yaml.safe_load(text))


def parse_rules(data: Mapping[str, Any]) -> Rules:
    try:
        return Rules(
            low_rating_max=int(data["low_rating"]["max_score"]),
            low_rating_severity=str(data["low_rating"]["severity"]),
            informal_payment_severity=str(data["informal_payment"]["severity"]),
            complaint_rating_max=int(data["complaint"]["with_rating_at_most"]),
            complaint_severity=str(data["complaint"]["severity"]),
            complaint_keywords=tuple(fold(str(k)) for k in data["complaint"]["keywords"]),
            late_severity=str(data["late"]["severity"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"escalation_rules.yaml: missing or bad entry {exc}") from None


def complains(comment: str, rules: Rules) -> bool:
    folded = fold(comment)
    return any(
        re.search(rf"\b{re.escape(keyword)}\b", folded) for keyword in rules.complaint_keywords
    )


def survey_triggers(
    questionnaire: Questionnaire,
    ratings: Mapping[str, int],
    yes_no: Mapping[str, str],
    comment: str | None,
    rules: Rules,
) -> list[Trigger]:
    """The escalations a finished survey opens, most serious first."""
    triggers: list[Trigger] = []
    payment = questionnaire.by_role("informal_payment")
    if payment is not None and yes_no.get(payment.id) == "yes":
        triggers.append(Trigger("informal_payment", rules.informal_payment_severity))
    lowest = min(ratings.values(), default=None)
    low = lowest is not None and lowest <= rules.low_rating_max
    if low:
        triggers.append(Trigger("low_rating", rules.low_rating_severity))
    if comment and not low:
        unhappy = lowest is not None and lowest <= rules.complaint_rating_max
        if unhappy or complains(comment, rules):
            triggers.append(Trigger("complaint", rules.complaint_severity))
    return triggers

"""Messages as data: the outbox payloads of the conversation, the same on every channel.

A payload is `{"text": ..., "buttons": [[{"label", "data"}]]}` (see bot/outbox.py). Choice
data is short (Telegram allows 64 bytes) and carries a reference checked against the
database when pressed, never anything a client could use to reach someone else's survey.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from handlers.questionnaire import Question, Questionnaire
from handlers.texts import rating_labels, t
from storage.models import Case, Survey

Payload = dict[str, Any]


@dataclass(frozen=True)
class Choice:
    label: str
    data: str


def payload(text: str, choices: list[Choice] | None = None, *, columns: int = 1) -> Payload:
    body: Payload = {"text": text}
    if choices:
        rows = [choices[i : i + columns] for i in range(0, len(choices), columns)]
        body["buttons"] = [[{"label": c.label, "data": c.data} for c in row] for row in rows]
    return body


def choices_of(body: Payload) -> list[Choice]:
    return [Choice(b["label"], b["data"]) for row in body.get("buttons", []) for b in row]


def local_date(moment: datetime | None, tz: ZoneInfo) -> str:
    """Dates shown to people: dd/mm/yyyy in local time (docs/contract.md section 7.8)."""
    return moment.astimezone(tz).strftime("%d/%m/%Y") if moment else ""


def local_time(moment: datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).strftime("%H:%M")


def fold(text: str) -> str:
    """Lower case without Vietnamese diacritics, so a typed `co` matches the choice `Có`."""
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold().strip()


# --- the survey ------------------------------------------------------------------------


def answer_data(survey: Survey, position: int, value: str) -> str:
    return f"a:{survey.ref}:{position}:{value}"


def question_choices(survey: Survey, question: Question, position: int) -> list[Choice]:
    locale = survey.locale
    choices: list[Choice] = []
    if question.kind == "rating":
        choices = [
            Choice(label, answer_data(survey, position, str(score)))
            for score, label in enumerate(rating_labels(locale), start=1)
        ]
    elif question.kind == "yes_no":
        choices = [
            Choice(t("choice.yes", locale), answer_data(survey, position, "y")),
            Choice(t("choice.no", locale), answer_data(survey, position, "n")),
        ]
    if not question.required or question.kind == "text":
        choices.append(Choice(t("choice.skip", locale), answer_data(survey, position, "skip")))
    if position > 0:
        choices.append(Choice(t("choice.back", locale), answer_data(survey, position, "back")))
    return choices


def question_message(
    survey: Survey, case: Case, questionnaire: Questionnaire, tz: ZoneInfo
) -> Payload:
    position = survey.position
    question = questionnaire.questions[position]
    locale = survey.locale
    header = t(
        "survey.header",
        locale,
        case_code=case.case_code,
        procedure_name=case.procedure.name,
        unit_name=case.unit.name,
        date=local_date(case.resolved_at, tz),
        n=position + 1,
        total=len(questionnaire),
    )
    text = f"{header}\n\n{question.prompt(locale)}"
    if question.kind == "text":
        text += "\n\n" + t("survey.text_hint", locale)
    return payload(text, question_choices(survey, question, position))


def minutes_for(questionnaire: Questionnaire) -> int:
    # About ten seconds a question, rounded up to whole minutes.
    return max(1, -(-len(questionnaire) * 10 // 60))


def invitation_message(
    survey: Survey, case: Case, questionnaire: Questionnaire, tz: ZoneInfo, *, reminder: bool
) -> Payload:
    locale = survey.locale
    common = {
        "case_code": case.case_code,
        "procedure_name": case.procedure.name,
        "minutes": minutes_for(questionnaire),
    }
    if reminder:
        text = t("survey.reminder", locale, **common)
    else:
        text = t(
            "survey.invitation",
            locale,
            unit_name=case.unit.name,
            resolved_date=local_date(case.resolved_at, tz),
            question_count=len(questionnaire),
            **common,
        )
    return payload(
        text,
        [
            Choice(t("choice.start", locale), f"s:{survey.ref}:start"),
            Choice(t("choice.later", locale), f"s:{survey.ref}:later"),
        ],
    )


def consent_message(case: Case, token: str, locale: str) -> Payload:
    text = t(
        "consent.request",
        locale,
        case_code=case.case_code,
        procedure_name=case.procedure.name,
        unit_name=case.unit.name,
    )
    return payload(
        text,
        [
            Choice(t("choice.agree", locale), f"c:{token}:y"),
            Choice(t("choice.decline", locale), f"c:{token}:n"),
        ],
    )


def language_message(locale: str) -> Payload:
    return payload(
        t("command.lang_prompt", locale),
        [Choice(t("choice.lang_vi", locale), "l:vi"), Choice(t("choice.lang_en", locale), "l:en")],
        columns=2,
    )


def delete_confirm_message(locale: str) -> Payload:
    return payload(
        t("command.delete_confirm_prompt", locale),
        [Choice(t("choice.yes", locale), "d:y"), Choice(t("choice.no", locale), "d:n")],
        columns=2,
    )


def match_typed_choice(text: str, choices: list[Choice]) -> Choice | None:
    """A typed reply taken as a choice: by the start of its label, or by its number in the list.

    Ratings are chosen by their score digit (the label begins with it); other lists, which never
    begin with a digit, may be answered with the choice's number, as Zalo shows them numbered.
    """
    typed = fold(text)
    if not typed:
        return None
    for choice in choices:
        label = fold(choice.label).lstrip("«» ")
        if (
            label == typed
            or label.startswith(typed + " ")
            or (typed[0].isdigit() and label.split(" ")[0] == typed)
        ):
            return choice
    if typed.isdigit() and not any(fold(c.label)[:1].isdigit() for c in choices):
        number = int(typed)
        if 1 <= number <= len(choices):
            return choices[number - 1]
    return None

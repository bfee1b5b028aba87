"""Tests for the questionnaire files and their loader (handlers/questionnaire.py)."""

from __future__ import annotations

from collections import Counter
from importlib import resources

import pytest
import yaml

from handlers import questionnaire as qmod
from handlers.questionnaire import (
    DEFAULT_QUESTIONNAIRE,
    FACTORS,
    LOCALES,
    Questionnaire,
    QuestionnaireError,
    UnknownQuestionnaire,
    available_questionnaires,
    load_questionnaire,
)


def test_both_questionnaires_are_available() -> None:
    assert {"sipas-short", "sipas-2023"} <= set(available_questionnaires())
    assert DEFAULT_QUESTIONNAIRE in available_questionnaires()


@pytest.mark.parametrize("questionnaire_id", ["sipas-short", "sipas-2023"])
def test_every_questionnaire_loads_with_both_locales(questionnaire_id: str) -> None:
    q = load_questionnaire(questionnaire_id)
    assert q.id == questionnaire_id
    for locale in LOCALES:
        assert q.title_for(locale).strip()
        for question in q.questions:
            assert question.prompt(locale).strip(), (question.id, locale)
    assert q.factors == FACTORS


@pytest.mark.parametrize("questionnaire_id", ["sipas-short", "sipas-2023"])
def test_informal_payment_and_comment_close_the_survey(questionnaire_id: str) -> None:
    q = load_questionnaire(questionnaire_id)
    informal, comment = q.questions[-2:]
    assert (informal.kind, informal.role, informal.factor) == ("yes_no", "informal_payment", None)
    assert informal.required
    assert (comment.kind, comment.role, comment.factor) == ("text", "comment", None)
    assert not comment.required
    assert q.by_role("informal_payment") is informal
    assert q.by_role("comment") is comment
    assert "phiền hà" in informal.prompt("vi")


def test_short_form_has_one_rating_per_factor() -> None:
    q = load_questionnaire("sipas-short")
    assert len(q.questions) == 7
    assert len(q.ratings) == 5
    assert [r.factor for r in q.ratings] == list(FACTORS)
    assert [r.id for r in q.ratings] == list(FACTORS)
    assert q.questions[0].prompt("vi").startswith("Ông/Bà")


def test_2023_form_has_items_15_to_33_by_factor() -> None:
    q = load_questionnaire("sipas-2023")
    assert len(q.questions) == 21
    assert [r.id for r in q.ratings] == [f"q{n}" for n in range(15, 34)]
    counts = Counter(r.factor for r in q.ratings)
    assert [counts[f] for f in FACTORS] == [4, 4, 5, 3, 3]
    assert [len(q.questions_for(f)) for f in FACTORS] == [4, 4, 5, 3, 3]


def test_lookup_by_id() -> None:
    q = load_questionnaire("sipas-2023")
    assert q.index_of("q15") == 0
    assert q.question("q23").factor == "civil_servant"
    assert q.index_of("comment") == len(q) - 1
    with pytest.raises(KeyError, match="q99"):
        q.index_of("q99")


def test_prompt_falls_back_to_vietnamese() -> None:
    question = load_questionnaire("sipas-short").question("access")
    assert question.prompt("fr") == question.prompt("vi")
    assert question.prompt("en") != question.prompt("vi")


def test_loading_is_cached() -> None:
    assert load_questionnaire("sipas-short") is load_questionnaire("sipas-short")


def test_unknown_id_names_the_available_ones() -> None:
    with pytest.raises(UnknownQuestionnaire) as info:
        load_questionnaire("sipas-1999")
    assert isinstance(info.value, ValueError)
    assert "sipas-1999" in str(info.value)
    assert "sipas-short" in str(info.value)
    assert "sipas-2023" in str(info.value)


def test_path_like_ids_are_unknown() -> None:
    with pytest.raises(UnknownQuestionnaire):
        load_questionnaire("../texts/vi")


def _short_raw() -> dict[str, object]:
    path = resources.files("handlers").joinpath("data", "questionnaires", "sipas-short.yaml")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return raw


def _parse(raw: dict[str, object]) -> Questionnaire:
    return qmod._parse(raw, "broken.yaml", "sipas-short")


def _questions(raw: dict[str, object]) -> list[dict[str, object]]:
    questions = raw["questions"]
    assert isinstance(questions, list)
    return questions


def test_a_valid_file_parses() -> None:
    assert _parse(_short_raw()) == load_questionnaire("sipas-short")


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda qs: qs[1].update(id="access"), r"question 'access': duplicate id"),
        (lambda qs: qs[0].update(kind="stars"), r"question 'access': unknown kind 'stars'"),
        (lambda qs: qs[0].update(factor="speed"), r"question 'access': unknown factor 'speed'"),
        (lambda qs: qs[0]["text"].pop("en"), r"question 'access': text: missing or empty 'en'"),
        (lambda qs: qs[2]["text"].pop("vi"), r"'civil_servant': text: missing or empty 'vi'"),
        (lambda qs: qs[0].update(required="yes"), r"'access': required must be true or false"),
        (lambda qs: qs[0].update(colour="red"), r"'access': unknown key\(s\) colour"),
        (lambda qs: qs[0].update(id="Access Q"), r"question 'Access Q': id must be"),
        (lambda qs: qs[5].update(kind="text"), r"'informal_payment': role 'informal_payment'"),
        (lambda qs: qs[6].update(role="informal_payment", kind="yes_no"), r"already taken"),
        (lambda qs: qs[5].update(factor="result"), r"'informal_payment': a yes_no question"),
        (lambda qs: qs.pop(3), r"no rating question for factor\(s\) result"),
    ],
)
def test_validation_names_file_and_question(break_it: object, message: str) -> None:
    raw = _short_raw()
    assert callable(break_it)
    break_it(_questions(raw))
    with pytest.raises(QuestionnaireError, match=r"^broken\.yaml: .*" + message):
        _parse(raw)


def test_validation_checks_the_file_id_and_title() -> None:
    raw = _short_raw()
    raw["id"] = "other"
    with pytest.raises(QuestionnaireError, match="does not match the file name"):
        _parse(raw)
    raw = _short_raw()
    raw["title"] = {"vi": "Khảo sát"}
    with pytest.raises(QuestionnaireError, match="title: missing or empty 'en'"):
        _parse(raw)

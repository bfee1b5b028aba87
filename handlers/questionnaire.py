"""SIPAS questionnaires: loaded from the YAML files in ``handlers/data/questionnaires/``.

A questionnaire is data, validated once when it is first loaded; see docs/sipas.md section 2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import Any, Literal, cast

import yaml

__all__ = [
    "DEFAULT_QUESTIONNAIRE",
    "FACTORS",
    "KINDS",
    "LOCALES",
    "ROLES",
    "Factor",
    "Kind",
    "Question",
    "Questionnaire",
    "QuestionnaireError",
    "Role",
    "UnknownQuestionnaire",
    "available_questionnaires",
    "load_questionnaire",
]


Kind = Literal["rating", "yes_no", "text"]
Factor = Literal["access", "procedure", "civil_servant", "result", "feedback_handling"]
Role = Literal["informal_payment", "comment"]

FACTORS: tuple[Factor, ...] = (
    "access",
    "procedure",
    "civil_servant",
    "result",
    "feedback_handling",
)
"""The five SIPAS factors, in the order of the national form."""

LOCALES = ("vi", "en")
"""Languages every questionnaire and message text exists in; the first is the fallback."""

KINDS: tuple[Kind, ...] = ("rating", "yes_no", "text")
ROLES: tuple[Role, ...] = ("informal_payment", "comment")
"""Questions the survey logic looks for by purpose rather than by id."""

DEFAULT_QUESTIONNAIRE = "sipas-short"


# The kind of question each role must be.
_ROLE_KINDS: Mapping[str, str] = {"informal_payment": "yes_no", "comment": "text"}
_QUESTION_ID = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*")
_QUESTION_KEYS = frozenset({"id", "kind", "factor", "required", "role", "text"})
_TOP_KEYS = frozenset({"id", "title", "questions"})
_DATA_PACKAGE = "handlers"
_DATA_DIR = ("data", "questionnaires")
_SUFFIX = ".yaml"


class QuestionnaireError(ValueError):
    """A questionnaire file is malformed; the message names the file and the question."""


_Fail = Callable[[str], QuestionnaireError]


class UnknownQuestionnaire(ValueError):
    """No questionnaire file has the requested id."""

    def __init__(self, questionnaire_id: str, available: list[str]) -> None:
        self.questionnaire_id = questionnaire_id
        self.available = available
        super().__init__(
            f"unknown questionnaire {questionnaire_id!r}; available: {', '.join(available)}"
        )


def _localized(text: Mapping[str, str], locale: str) -> str:
    return text.get(locale) or text[LOCALES[0]]


@dataclass(frozen=True)
class Question:
    """One question; ``factor`` is set only for ratings that count towards a SIPAS factor."""

    id: str
    kind: Kind
    factor: Factor | None
    required: bool
    role: Role | None
    text: Mapping[str, str] = field(hash=False)

    def prompt(self, locale: str) -> str:
        """The question's wording in ``locale``, or in Vietnamese if that locale is unknown."""
        return _localized(self.text, locale)


@dataclass(frozen=True)
class Questionnaire:
    """An ordered, validated list of questions."""

    id: str
    title: Mapping[str, str] = field(hash=False)
    questions: tuple[Question, ...]

    def title_for(self, locale: str) -> str:
        """The title in ``locale``, or in Vietnamese if that locale is unknown."""
        return _localized(self.title, locale)

    def index_of(self, question_id: str) -> int:
        """The 0-based position of a question; ``KeyError`` if there is no such question."""
        for index, question in enumerate(self.questions):
            if question.id == question_id:
                return index
        raise KeyError(f"questionnaire {self.id!r} has no question {question_id!r}")

    def question(self, question_id: str) -> Question:
        """The question with this id; ``KeyError`` if there is none."""
        return self.questions[self.index_of(question_id)]

    def by_role(self, role: Role) -> Question | None:
        """The question playing ``role`` (e.g. the informal-payment item), if any."""
        return next((q for q in self.questions if q.role == role), None)

    @property
    def ratings(self) -> tuple[Question, ...]:
        """The rating questions, in order."""
        return tuple(q for q in self.questions if q.kind == "rating")

    @property
    def factors(self) -> tuple[Factor, ...]:
        """The factors this questionnaire rates, in the order of ``FACTORS``."""
        rated = {q.factor for q in self.questions if q.factor is not None}
        return tuple(f for f in FACTORS if f in rated)

    def questions_for(self, factor: str) -> tuple[Question, ...]:
        """The rating questions of one factor, in order."""
        return tuple(q for q in self.questions if q.factor == factor)

    def __len__(self) -> int:
        return len(self.questions)


def _data_dir() -> Traversable:
    return resources.files(_DATA_PACKAGE).joinpath(*_DATA_DIR)


def available_questionnaires() -> list[str]:
    """The ids of all questionnaire files shipped with the package, sorted."""
    return sorted(
        entry.name.removesuffix(_SUFFIX)
        for entry in _data_dir().iterdir()
        if entry.is_file() and entry.name.endswith(_SUFFIX)
    )


@cache
def load_questionnaire(questionnaire_id: str) -> Questionnaire:
    """Load and validate a questionnaire by id; the result is cached."""
    available = available_questionnaires()
    if questionnaire_id not in available:
        raise UnknownQuestionnaire(questionnaire_id, available)
    file_name = questionnaire_id + _SUFFIX
    source = _data_dir().joinpath(file_name).read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise QuestionnaireError(f"{file_name}: not valid YAML: {exc}") from exc
    return _parse(raw, file_name, questionnaire_id)


def _parse(raw: object, file_name: str, expected_id: str) -> Questionnaire:
    def fail(message: str) -> QuestionnaireError:
        return QuestionnaireError(f"{file_name}: {message}")

    if not isinstance(raw, dict):
        raise fail("the top level must be a mapping with id, title and questions")
    _check_keys(raw, _TOP_KEYS, {"id", "title", "questions"}, fail, "the top level")
    if raw["id"] != expected_id:
        raise fail(f"id {raw['id']!r} does not match the file name (expected {expected_id!r})")
    title = _parse_locales(raw["title"], lambda m: fail(f"title: {m}"))

    raw_questions = raw["questions"]
    if not isinstance(raw_questions, list) or not raw_questions:
        raise fail("questions must be a non-empty list")
    questions: list[Question] = []
    seen_ids: set[str] = set()
    seen_roles: set[str] = set()
    for position, item in enumerate(raw_questions, start=1):
        label = item.get("id") if isinstance(item, dict) else None
        where = f"question {label!r}" if isinstance(label, str) else f"question #{position}"

        def fail_q(message: str, where: str = where) -> QuestionnaireError:
            return fail(f"{where}: {message}")

        question = _parse_question(item, fail_q)
        if question.id in seen_ids:
            raise fail_q("duplicate id")
        seen_ids.add(question.id)
        if question.role is not None:
            if question.role in seen_roles:
                raise fail_q(f"role {question.role!r} is already taken by another question")
            seen_roles.add(question.role)
        questions.append(question)

    rated = {q.factor for q in questions if q.kind == "rating"}
    missing = [f for f in FACTORS if f not in rated]
    if missing:
        raise fail(f"no rating question for factor(s) {', '.join(missing)}")
    return Questionnaire(id=expected_id, title=title, questions=tuple(questions))


def _parse_question(item: object, fail: _Fail) -> Question:
    if not isinstance(item, dict):
        raise fail("must be a mapping")
    _check_keys(item, _QUESTION_KEYS, {"id", "kind", "required", "text"}, fail, "question")
    question_id = item["id"]
    if not isinstance(question_id, str) or not _QUESTION_ID.fullmatch(question_id):
        raise fail("id must be a lower-case snake_case or dotted name such as 'access' or 'q15'")
    kind = item["kind"]
    if kind not in KINDS:
        raise fail(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    factor = item.get("factor")
    if factor is not None and factor not in FACTORS:
        raise fail(f"unknown factor {factor!r} (expected null or one of {', '.join(FACTORS)})")
    if factor is not None and kind != "rating":
        raise fail(f"a {kind} question cannot count towards factor {factor!r}; only ratings do")
    required = item["required"]
    if not isinstance(required, bool):
        raise fail(f"required must be true or false, not {required!r}")
    role = item.get("role")
    if role is not None:
        if role not in ROLES:
            raise fail(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if kind != _ROLE_KINDS[role]:
            raise fail(f"role {role!r} needs kind {_ROLE_KINDS[role]!r}, not {kind!r}")
    text = _parse_locales(item["text"], lambda m: fail(f"text: {m}"))
    return Question(
        id=question_id,
        kind=cast(Kind, kind),
        factor=cast(Factor | None, factor),
        required=required,
        role=cast(Role | None, role),
        text=text,
    )


def _parse_locales(raw: object, fail: _Fail) -> Mapping[str, str]:
    if not isinstance(raw, dict):
        raise fail(f"must be a mapping with the locales {', '.join(LOCALES)}")
    unknown = sorted(str(k) for k in raw if k not in LOCALES)
    if unknown:
        raise fail(f"unknown locale(s) {', '.join(unknown)} (expected {', '.join(LOCALES)})")
    for locale in LOCALES:
        value = raw.get(locale)
        if not isinstance(value, str) or not value.strip():
            raise fail(f"missing or empty {locale!r} text")
    return MappingProxyType({locale: " ".join(raw[locale].split()) for locale in LOCALES})


def _check_keys(
    raw: dict[Any, Any], allowed: frozenset[str], required: set[str], fail: _Fail, what: str
) -> None:
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)} in {what}")
    missing = sorted(k for k in required if k not in raw)
    if missing:
        raise fail(f"missing key(s) {', '.join(missing)} in {what}")

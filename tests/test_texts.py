"""Tests for the message text catalogues (handlers/data/texts) and ``handlers.texts``."""

from __future__ import annotations

import re

import pytest

from handlers.questionnaire import LOCALES
from handlers.texts import (
    MissingTextParameter,
    catalogue,
    placeholders,
    rating_labels,
    t,
)

# The keys the rest of the bot relies on; a catalogue may hold more.
REQUIRED_KEYS = {
    *(f"choice.{c}" for c in ("agree", "decline", "start", "yes", "no", "skip", "back")),
    *(f"choice.{c}" for c in ("later", "acknowledge", "resolved")),
    *(f"rating.{n}" for n in range(1, 6)),
    "consent.request",
    "consent.accepted",
    "consent.declined",
    "start.no_token",
    "start.token_unknown",
    "start.token_used",
    "start.token_expired",
    *(
        f"survey.{k}"
        for k in (
            "invitation",
            "reminder",
            "header",
            "thanks",
            "expired",
            "already_completed",
            "stale_press",
            "not_yours",
            "text_hint",
            "invalid_reply",
        )
    ),
    *(
        f"command.{k}"
        for k in (
            "help",
            "lang_prompt",
            "lang_set",
            "stop_done",
            "delete_confirm_prompt",
            "delete_done",
            "delete_cancelled",
        )
    ),
    "apology.letter",
    "apology.late_resolution",
    "courtesy.birth",
    "courtesy.death",
    "courtesy.marriage",
    *(
        f"escalation.{k}"
        for k in (
            "card",
            "severity.critical",
            "severity.high",
            "severity.normal",
            "reason.low_rating",
            "reason.informal_payment",
            "reason.complaint",
            "reason.late",
            "timeliness.on_time",
            "timeliness.late",
            "ack_done",
            "resolve_prompt_note",
            "resolve_done",
            "climbed_notice_lower",
            "climbed_card_prefix",
            "resolve_reminder",
            "not_authorised",
            "citizen_outcome",
            "recovery_question",
            "recovery_thanks",
            "head_invite_welcome",
            "head_invite_invalid",
        )
    ),
}

CHOICE_PREFIXES = {
    "vi": {
        "yes": "Có",
        "no": "Không",
        "skip": "Bỏ qua",
        "agree": "Đồng ý",
        "start": "Bắt đầu",
        "acknowledge": "Tiếp nhận",
        "resolved": "Đã xử lý",
    },
    "en": {
        "yes": "Yes",
        "no": "No",
        "skip": "Skip",
        "agree": "Agree",
        "start": "Start",
        "acknowledge": "Acknowledge",
        "resolved": "Resolved",
    },
}
AGREE_PREFIXES = {"vi": "Đồng ý", "en": "Agree"}


def _choices(locale: str) -> dict[str, str]:
    return {
        key.removeprefix("choice."): text
        for key, text in catalogue(locale).items()
        if key.startswith("choice.")
    }


def test_catalogues_have_the_same_keys() -> None:
    vi, en = (set(catalogue(locale)) for locale in LOCALES)
    assert vi - en == set(), "keys missing in en.yaml"
    assert en - vi == set(), "keys missing in vi.yaml"


def test_catalogues_have_the_same_placeholders_per_key() -> None:
    mismatched = {
        key: (sorted(placeholders(key, "vi")), sorted(placeholders(key, "en")))
        for key in catalogue("vi")
        if placeholders(key, "vi") != placeholders(key, "en")
    }
    assert mismatched == {}


def test_required_keys_are_present() -> None:
    for locale in LOCALES:
        assert REQUIRED_KEYS - set(catalogue(locale)) == set(), locale


@pytest.mark.parametrize("locale", LOCALES)
def test_rating_labels_begin_with_their_digit(locale: str) -> None:
    labels = rating_labels(locale)
    assert len(labels) == 5
    for score, label in enumerate(labels, start=1):
        assert label.startswith(f"{score} "), label
        assert not label[1:2].isdigit()


def test_rating_labels_wording() -> None:
    assert rating_labels("vi") == [
        "1 - Rất không hài lòng",
        "2 - Không hài lòng",
        "3 - Bình thường",
        "4 - Hài lòng",
        "5 - Rất hài lòng",
    ]
    assert rating_labels("en")[0] == "1 - Very dissatisfied"
    assert rating_labels("en")[4] == "5 - Very satisfied"


@pytest.mark.parametrize("locale", LOCALES)
def test_choice_labels_follow_the_chat_conventions(locale: str) -> None:
    choices = _choices(locale)
    for name, prefix in CHOICE_PREFIXES[locale].items():
        assert choices[name].startswith(prefix), (name, choices[name])
    for name, label in choices.items():
        assert not label[:1].isdigit(), (name, label)
        if name != "agree":
            assert not label.startswith(AGREE_PREFIXES[locale]), (name, label)


@pytest.mark.parametrize("locale", LOCALES)
def test_no_choice_label_is_a_prefix_of_another(locale: str) -> None:
    # Typed replies (Zalo) are matched against labels; a prefix would make one ambiguous.
    labels = [*_choices(locale).values(), *rating_labels(locale)]
    assert len(set(labels)) == len(labels)
    for a in labels:
        for b in labels:
            assert a == b or not b.startswith(a), (a, b)


def test_yes_no_labels_do_not_start_other_choices() -> None:
    for locale, (yes, no) in {"vi": ("Có", "Không"), "en": ("Yes", "No")}.items():
        for name, label in _choices(locale).items():
            if name not in ("yes", "no"):
                assert not re.match(rf"({yes}|{no})\b", label), (locale, name, label)


def test_placeholders_are_plain_names() -> None:
    for locale in LOCALES:
        for key, text in catalogue(locale).items():
            for match in re.finditer(r"(?<!\{)\{([^{}]*)\}(?!\})", text):
                assert match.group(1).isidentifier(), (locale, key, match.group(0))


@pytest.mark.parametrize("locale", LOCALES)
def test_every_text_formats_with_its_placeholders(locale: str) -> None:
    for key in catalogue(locale):
        params = {name: f"<{name}>" for name in placeholders(key, locale)}
        text = t(key, locale, **params)
        assert text.strip()
        assert "{" not in text, (key, text)
        for value in params.values():
            assert value in text


def test_formatting_with_params() -> None:
    header = t(
        "survey.header",
        "vi",
        case_code="000.00.01.H26-260101-0001",
        procedure_name="Đăng ký khai sinh",
        unit_name="UBND phường Hàng Bạc",
        date="05/01/2026",
        n=2,
        total=7,
    )
    assert header == (
        "Hồ sơ 000.00.01.H26-260101-0001 · Đăng ký khai sinh · UBND phường Hàng Bạc · 05/01/2026\n"
        "Câu 2/7"
    )
    assert t(
        "survey.header",
        "en",
        case_code="A",
        procedure_name="B",
        unit_name="C",
        date="D",
        n=1,
        total=5,
    ).endswith("Question 1/5")


def test_extra_params_are_ignored() -> None:
    assert t("choice.skip", "vi", case_code="A1") == "Bỏ qua"


def test_param_values_are_not_reformatted() -> None:
    note = "Đã nhắc nhở công chức {x} và trả lại 50.000đ"
    text = t(
        "escalation.citizen_outcome",
        "vi",
        case_code="A1",
        procedure_name="P",
        unit_name="UBND xã",
        note=note,
    )
    assert note in text


def test_apology_letter_has_all_fields() -> None:
    params = {
        "citizen_name": "Nguyễn Văn An",
        "unit_name": "UBND phường Hàng Bạc",
        "case_code": "H26-0001",
        "procedure_name": "Đăng ký khai sinh",
        "received_date": "02/01/2026",
        "old_due_date": "05/01/2026",
        "new_due_date": "09/01/2026",
        "reason": "Cần xác minh thêm thông tin",
    }
    assert placeholders("apology.letter", "vi") == set(params)
    letter = t("apology.letter", "vi", **params)
    for value in params.values():
        assert value in letter
    assert "xin lỗi" in letter


def test_missing_param_raises_a_clear_error() -> None:
    with pytest.raises(MissingTextParameter) as info:
        t("consent.accepted", "en")
    assert isinstance(info.value, ValueError)
    assert "consent.accepted" in str(info.value)
    assert "case_code" in str(info.value)


def test_unknown_key_raises_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match=r"survey\.no_such_text"):
        t("survey.no_such_text", "vi")


def test_unknown_locale_falls_back_to_vietnamese() -> None:
    assert t("choice.skip", "fr") == "Bỏ qua"
    assert t("consent.accepted", "zh", case_code="A1") == t(
        "consent.accepted", "vi", case_code="A1"
    )
    assert rating_labels("fr") == rating_labels("vi")


def test_locales_differ() -> None:
    assert t("choice.skip", "en") == "Skip"
    assert t("command.help", "en") != t("command.help", "vi")

"""The SIPAS formula, the Wilson interval, the trend test and ISO weeks in local time: pure
functions against hand-computed values."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from handlers.comment_themes import _fast_fold, count_themes, themes_of
from handlers.digest import Week
from handlers.errors import InvalidInput
from handlers.rendering import fold
from handlers.sipas_index import ItemTally, compute_index, one_decimal, trend, wilson_interval

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")


def tallies(*responses: dict[str, int | None], factor_of: dict[str, str]) -> list[ItemTally]:
    """Item tallies of whole responses, counted the way the database counts them."""
    found = []
    for question_id, factor in factor_of.items():
        values = [r[question_id] for r in responses if r.get(question_id) is not None]
        found.append(
            ItemTally(
                question_id,
                factor,
                answered=len(values),
                satisfied=sum(1 for v in values if v is not None and v >= 4),
                score_sum=sum(v for v in values if v is not None),
            )
        )
    return found


SHORT = {f: f for f in ("access", "procedure", "civil_servant", "result", "feedback_handling")}
FULL = {
    **{f"q{n}": "access" for n in range(15, 19)},
    **{f"q{n}": "procedure" for n in range(19, 23)},
    **{f"q{n}": "civil_servant" for n in range(23, 28)},
    **{f"q{n}": "result" for n in range(28, 31)},
    **{f"q{n}": "feedback_handling" for n in range(31, 34)},
}


def test_the_worked_example_of_sipas_md_gives_40() -> None:
    response = {
        "access": 5,
        "procedure": 4,
        "civil_servant": 2,
        "result": 1,
        "feedback_handling": 3,
    }
    figures = compute_index(tallies(response, factor_of=SHORT))
    assert {k: f.index for k, f in figures.factors.items()} == {
        "access": 100.0,
        "procedure": 100.0,
        "civil_servant": 0.0,
        "result": 0.0,
        "feedback_handling": 0.0,
    }
    assert one_decimal(figures.sipas_index) == 40.0


def test_the_19_item_form_averages_item_rates_within_each_factor() -> None:
    first: dict[str, int | None] = dict.fromkeys(FULL, 5)
    first.update(q15=2, q23=3, q24=3, q31=None)  # q31 skipped: not counted at all
    second: dict[str, int | None] = dict.fromkeys(FULL, 4)
    second.update(q16=1, q28=2, q31=5, q32=1)
    figures = compute_index(tallies(first, second, factor_of=FULL))
    shown = {k: one_decimal(f.index) for k, f in figures.factors.items()}
    # access (50+50+100+100)/4; civil_servant (50+50+100+100+100)/5; result (50+100+100)/3;
    # feedback_handling: q31 has one answer (5, so 100), q32 50, q33 100.
    assert shown == {
        "access": 75.0,
        "procedure": 100.0,
        "civil_servant": 80.0,
        "result": 83.3,
        "feedback_handling": 83.3,
    }
    assert one_decimal(figures.sipas_index) == 84.3  # (75+100+80+83.33+83.33)/5
    assert figures.factors["access"].mean_score == pytest.approx((17 + 13) / 8)


def test_a_factor_nobody_rated_is_left_out_and_no_answers_give_no_index() -> None:
    skipped = {"access": 5, "procedure": 5, "civil_servant": 1, "result": 5}
    figures = compute_index(tallies(skipped, factor_of=SHORT))
    assert figures.factors["feedback_handling"].index is None
    assert figures.sipas_index == 75.0
    assert compute_index([]).sipas_index is None


def test_one_decimal_rounds_halves_up() -> None:
    assert one_decimal(87.25) == 87.3
    assert one_decimal(84.33333) == 84.3
    assert one_decimal(66.666) == 66.7
    assert one_decimal(None) is None


@pytest.mark.parametrize(
    ("share", "n", "low", "high"),
    [
        (0.5, 10, 0.2366, 0.7634),  # the textbook 5/10
        (0.0, 10, 0.0, 0.2775),  # never 0-0: the interval is informative at the edge
        (0.8, 100, 0.7112, 0.8666),
        (1.0, 20, 0.8389, 1.0),
    ],
)
def test_the_wilson_interval_matches_known_values(
    share: float, n: int, low: float, high: float
) -> None:
    interval = wilson_interval(share, n)
    assert interval is not None
    assert interval[0] == pytest.approx(low, abs=5e-4)
    assert interval[1] == pytest.approx(high, abs=5e-4)
    assert wilson_interval(0.5, 0) is None


def test_a_change_is_marked_only_beyond_noise() -> None:
    assert trend(80.0, 100, 60.0, 100) == "up"  # z = 3.09
    assert trend(60.0, 100, 80.0, 100) == "down"
    assert trend(62.0, 100, 60.0, 100) == "same"  # z = 0.29
    assert trend(90.0, 8, 70.0, 8) == "same"  # 20 points, but 8 answers a week
    assert trend(None, 0, 60.0, 100) is None


def test_weeks_are_iso_weeks_in_local_time() -> None:
    week = Week.parse("2026-W47")
    assert week.start(HANOI) == datetime(2026, 11, 15, 17, 0, tzinfo=UTC)  # Mon 00:00 +07
    assert week.end(HANOI) == datetime(2026, 11, 22, 17, 0, tzinfo=UTC)
    sunday_late = datetime(2026, 11, 22, 16, 30, tzinfo=UTC)  # Sunday 23:30 in Hà Nội
    assert Week.containing(sunday_late, HANOI) == week
    monday_early = datetime(2026, 11, 22, 17, 10, tzinfo=UTC)  # still Sunday in UTC
    assert Week.containing(monday_early, HANOI) == Week(2026, 48)
    assert Week.last(monday_early, HANOI) == week
    assert Week.parse("2027-W01").previous() == Week(2026, 53)
    assert [w.label for w in week.back(3)] == ["2026-W45", "2026-W46", "2026-W47"]


@pytest.mark.parametrize("text", ["2026-47", "2026-W54", "2025-W53", "W47", "2026-W7"])
def test_a_bad_week_names_itself(text: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        Week.parse(text)
    assert text in raised.value.fields["week"]


def test_comment_themes_fold_diacritics_and_case() -> None:
    assert themes_of("Phải CHỜ LÂU quá, cán bộ thái độ khó chịu") == {"waiting", "attitude"}
    assert themes_of("cho doi lau, le phi cao") == {"waiting", "fees"}
    assert themes_of("Cán bộ đòi bồi dưỡng") == {"informal_payment"}
    assert themes_of("Rất tốt, cảm ơn") == set()
    counts = count_themes(["chờ lâu", "chờ đợi mệt", "hướng dẫn không rõ"])
    assert counts == {"waiting": 2, "guidance": 1}


def test_theme_folding_by_table_equals_the_reference_fold() -> None:
    every_letter = "".join(chr(code) for code in range(0xC0, 0x1F00) if chr(code).isalpha())
    for text in (every_letter, "Cán bộ ĐÒI tiền bồi dưỡng, ỞỸỴ", "  Chờ lâu  "):
        for form in ("NFC", "NFD"):
            given = unicodedata.normalize(form, text)
            assert _fast_fold(given) == fold(given)

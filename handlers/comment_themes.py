"""The themes of citizens' comments, counted for digests: never quoted, only counted.

A comment is folded to lower case without diacritics (`handlers.rendering.fold`, so "chờ lâu",
"CHO LAU" and "cho lau" read alike) and matched against a small lexicon per theme; one comment
may touch several themes and counts once in each. The lexicon is deliberately short and
readable: a theme is named only when its words say so, never guessed.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import cache

from handlers.rendering import fold

__all__ = ["THEMES", "THEME_NAMES", "count_themes", "themes_of"]

THEMES: Mapping[str, tuple[str, ...]] = {
    # Chờ đợi lâu, trễ hẹn, đi lại nhiều lần.
    "waiting": (
        "cho lau",
        "cho doi",
        "doi lau",
        "lau qua",
        "xep hang",
        "cham",
        "tre hen",
        "qua han",
        "di lai nhieu lan",
        "mat thoi gian",
        "wait",
        "slow",
        "late",
        "delay",
        "queue",
    ),
    # Thái độ của cán bộ.
    "attitude": (
        "thai do",
        "kho chiu",
        "cau gat",
        "hach dich",
        "thieu ton trong",
        "to tieng",
        "khong nhiet tinh",
        "tho lo",
        "rude",
        "impolite",
        "attitude",
    ),
    # Hướng dẫn khó hiểu, phải bổ sung nhiều lần.
    "guidance": (
        "huong dan",
        "kho hieu",
        "khong ro",
        "giai thich",
        "bo sung nhieu lan",
        "guidance",
        "unclear",
        "explain",
    ),
    # Phí, lệ phí.
    "fees": ("phi", "le phi", "tien", "fee", "fees", "cost", "expensive"),
    # Giấy tờ, hồ sơ phải nộp.
    "documents": (
        "giay to",
        "ban sao",
        "cong chung",
        "bo sung",
        "document",
        "documents",
        "papers",
    ),
    # Cơ sở vật chất: chỗ ngồi, máy lấy số, vệ sinh, chỗ để xe.
    "facilities": (
        "cho ngoi",
        "ghe",
        "may lay so",
        "nong",
        "chat",
        "ve sinh",
        "cho de xe",
        "dieu hoa",
        "facility",
        "facilities",
        "seat",
        "parking",
    ),
    # Nhũng nhiễu, tiêu cực (Chỉ thị 10/CT-TTg).
    "informal_payment": (
        "nhung nhieu",
        "tieu cuc",
        "boi duong",
        "phong bi",
        "tien ngoai",
        "thu them",
        "ca phe",
        "lot tay",
        "bribe",
        "under the table",
    ),
}
"""Words of each theme, folded (no diacritics, lower case), matched as whole words."""

THEME_NAMES: Mapping[str, Mapping[str, str]] = {
    "waiting": {"vi": "chờ đợi, trễ hẹn", "en": "waiting, delays"},
    "attitude": {"vi": "thái độ cán bộ", "en": "officials' attitude"},
    "guidance": {"vi": "hướng dẫn", "en": "guidance"},
    "fees": {"vi": "phí, lệ phí", "en": "fees"},
    "documents": {"vi": "giấy tờ, hồ sơ", "en": "documents"},
    "facilities": {"vi": "cơ sở vật chất", "en": "facilities"},
    "informal_payment": {"vi": "nhũng nhiễu, tiêu cực", "en": "informal payments"},
}


@cache
def _patterns() -> dict[str, re.Pattern[str]]:
    return {
        theme: re.compile(r"\b(?:" + "|".join(re.escape(word) for word in words) + r")\b")
        for theme, words in THEMES.items()
    }


@cache
def _fold_table() -> dict[int, str]:
    """Every precomposed Latin letter (Vietnamese included) to its folded form."""
    table: dict[int, str] = {}
    for code in range(0xC0, 0x1F00):
        folded = fold(chr(code))
        if len(folded) == 1 and folded != chr(code):
            table[code] = folded
    return table


def _fast_fold(text: str) -> str:
    """`handlers.rendering.fold`, by table when the text is composed Vietnamese (what chat
    clients send): the table leaves plain ASCII, else the general fold decides."""
    if unicodedata.is_normalized("NFC", text):
        translated = text.translate(_fold_table())
        if translated.isascii():
            return translated.casefold().strip()
    return fold(text)


def themes_of(comment: str) -> set[str]:
    """The themes one comment touches."""
    text = _fast_fold(comment)
    return {theme for theme, pattern in _patterns().items() if pattern.search(text)}


def count_themes(comments: Iterable[str]) -> Counter[str]:
    """How many comments touch each theme."""
    counts: Counter[str] = Counter()
    for comment in comments:
        counts.update(themes_of(comment))
    return counts

"""Hides phone numbers in citizens' comments before an official reads them on the dashboard.

Comments are free text: a citizen may write their own number ("gọi lại 0912 345 678") or an
official's. The pattern covers Vietnamese mobile and landline numbers as people write them:
0912345678, 091.234.5678, 0912-345-678, +84 912 345 678, 84912345678, (024) 3825 1234.
It errs on the side of hiding: any run of 9 to 11 digits starting with 0 or 84 (separated by
spaces, dots, dashes or brackets) goes, so a case code like 000.00.12.H26-261122-0001 (its
digit runs are short) stays.
"""

from __future__ import annotations

import re

__all__ = ["PHONE", "mask_phones"]

# The first digit group is `0` or `84` (optionally `+84`, `(0…)`); then 8 to 10 more digits,
# each optionally after one or two separators. Not inside a longer number or word.
PHONE = re.compile(
    r"(?<![\w+])(?:\+\s?84|84|\(?0)(?:[\s.\-()]{0,2}\d){8,10}(?![\d])",
)


def mask_phones(text: str, replacement: str) -> str:
    """`text` with every phone number replaced by `replacement`."""
    return PHONE.sub(replacement, text)

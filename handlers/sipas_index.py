"""The SIPAS formula, in one place (docs/sipas.md section 3), with the statistics digests show
beside it.

- An item's satisfaction rate is the share of its answers rated 4 or 5 among those who
  answered it (a skipped item does not count).
- A factor's index is the mean of its items' rates.
- The SIPAS index is the mean of the five factor indices.
- Everything is a percentage, rounded to one decimal only when shown (never before averaging).

Worked example of docs/sipas.md: one response to the short questionnaire rated access 5,
procedure 4, civil_servant 2, result 1, feedback_handling 3 gives factor indices 100, 100, 0,
0, 0 and a SIPAS index of 40.0. With the 19-item form (`sipas-2023`) a factor has several
items (access: q15-q18, ...), each item's rate is computed first and the factor is their mean,
so an item few people answer weighs as much as one everybody answers, as in the published
method. A factor nobody rated is left out of the mean (the short form's feedback_handling may
be skipped); with no rated factor at all there is no index.

The formula follows the published SIPAS method as far as it could be checked; correct it here,
against the annex of QĐ 1001/QĐ-BNV, and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from handlers.questionnaire import FACTORS

__all__ = [
    "SATISFIED_FROM",
    "Z_95",
    "FactorFigures",
    "IndexFigures",
    "ItemTally",
    "Trend",
    "compute_index",
    "one_decimal",
    "trend",
    "wilson_interval",
]

SATISFIED_FROM = 4
"""A rating of 4 (Hài lòng) or 5 (Rất hài lòng) counts as satisfied."""

Z_95 = 1.959963984540054
"""The two-sided 95% quantile of the standard normal distribution."""

Trend = Literal["up", "down", "same"]


@dataclass(frozen=True)
class ItemTally:
    """What the database counted for one item: its answers, the satisfied ones, their sum."""

    question_id: str
    factor: str
    answered: int
    satisfied: int
    score_sum: int

    @property
    def rate(self) -> float | None:
        """The item's satisfaction rate in percent, or None when nobody answered it."""
        if self.answered <= 0:
            return None
        return 100.0 * self.satisfied / self.answered


@dataclass(frozen=True)
class FactorFigures:
    index: float | None  # mean of the items' rates, percent
    mean_score: float | None  # mean rating 1-5 over every answer of the factor's items
    answered: int


@dataclass(frozen=True)
class IndexFigures:
    """The index of one scope and week, unrounded."""

    sipas_index: float | None
    factors: Mapping[str, FactorFigures]
    items: tuple[ItemTally, ...]


def compute_index(tallies: Iterable[ItemTally]) -> IndexFigures:
    """docs/sipas.md section 3: item rates, then factor means, then the mean of the factors."""
    items = tuple(tallies)
    factors: dict[str, FactorFigures] = {}
    for factor in FACTORS:
        own = [item for item in items if item.factor == factor]
        rates = [rate for rate in (item.rate for item in own) if rate is not None]
        answered = sum(item.answered for item in own)
        score_sum = sum(item.score_sum for item in own)
        factors[factor] = FactorFigures(
            index=sum(rates) / len(rates) if rates else None,
            mean_score=score_sum / answered if answered else None,
            answered=answered,
        )
    indices = [f.index for f in factors.values() if f.index is not None]
    sipas = sum(indices) / len(indices) if indices else None
    return IndexFigures(sipas_index=sipas, factors=factors, items=items)


def one_decimal(value: float | None) -> float | None:
    """A percentage as shown: one decimal, halves rounded away from zero (87.25 -> 87.3)."""
    if value is None:
        return None
    return math.floor(abs(value) * 10 + 0.5 + 1e-9) / 10 * (1 if value >= 0 else -1)


def wilson_interval(share: float, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion `share` (0-1) observed over `n` trials.

    Digests apply it to the index read as a share satisfied (index / 100) over the number of
    responses: each response weighs one, whatever the number of items it rated. None for n=0.
    """
    if n <= 0:
        return None
    share = min(1.0, max(0.0, share))
    z2 = z * z
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(share * (1 - share) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def trend(
    current: float | None, current_n: int, previous: float | None, previous_n: int
) -> Trend | None:
    """Up or down only when the change is beyond noise; None when either week has no index.

    The test is the two-proportion z-test with a pooled variance, at the 5% level (two-sided):
    the indices are read as shares satisfied (percent / 100) over the weeks' responses, and the
    change is marked when |z| >= 1.96. Anything smaller is "same": the difference could come
    from who happened to answer.
    """
    if current is None or previous is None or current_n <= 0 or previous_n <= 0:
        return None
    p1, p2 = current / 100.0, previous / 100.0
    pooled = (p1 * current_n + p2 * previous_n) / (current_n + previous_n)
    variance = pooled * (1 - pooled) * (1 / current_n + 1 / previous_n)
    if variance <= 0:
        return "same" if p1 == p2 else ("up" if p1 > p2 else "down")
    z = (p1 - p2) / math.sqrt(variance)
    if z >= Z_95:
        return "up"
    if z <= -Z_95:
        return "down"
    return "same"

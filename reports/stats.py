"""Seed statistics for tables and figures: mean, std and a Student-t interval over seeds, the interval of a step's
change (Welch), and the sign verdict of a Fig. 3 step against the paper's stated direction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

LEVEL = 0.95


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof 1) and the two-sided t-interval of the mean over `n` seeds (None below 2 seeds)."""

    n: int
    mean: float | None
    std: float | None
    low: float | None
    high: float | None


def _t(level: float, dof: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, dof))


def summarize(values: Sequence[float], level: float = LEVEL) -> Summary:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = sum(values) / n
    if n < 2:
        return Summary(1, mean, None, None, None)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t(level, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def difference(step: Sequence[float], parent: Sequence[float], level: float = LEVEL) -> Summary:
    """mean(step) - mean(parent) with Welch's t-interval (unequal variances; Welch-Satterthwaite degrees of freedom).
    The interval is None unless both sides have >= 2 seeds."""
    a, b = summarize(step, level), summarize(parent, level)
    if a.mean is None or b.mean is None:
        return Summary(0, None, None, None, None)
    diff = a.mean - b.mean
    if a.std is None or b.std is None:
        return Summary(min(a.n, b.n), diff, None, None, None)
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Summary(min(a.n, b.n), diff, 0.0, diff, diff)
    dof = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    half = _t(level, dof) * se
    return Summary(min(a.n, b.n), diff, se, diff - half, diff + half)


def verdict(change: Summary, paper_direction: str | None, lower_is_better: bool = True) -> str:
    """'as paper' / 'opposite' when the interval of the change excludes 0, 'within noise' when it covers 0.

    `paper_direction`: 'better' | 'worse' (what the paper reports for the step's quality), 'comparable' (the paper
    claims no real change: a change beyond noise reads 'better (paper: ~)' or 'worse (paper: ~)'), None (no claim,
    e.g. the baseline: ''). Fewer than 2 seeds on either side: 'n/a (1 seed)'."""
    if paper_direction is None:
        return ""
    if change.low is None or change.high is None:
        return "n/a (1 seed)" if change.mean is not None else ""
    if change.low <= 0 <= change.high:
        return "within noise"
    observed = "better" if (change.high < 0) == lower_is_better else "worse"
    if paper_direction == "comparable":
        return f"{observed} (paper: ~)"
    return "as paper" if observed == paper_direction else "opposite"

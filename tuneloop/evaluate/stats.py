"""Is "better" really better? Bootstrap intervals, McNemar's test and paired tests of per-example scores.

All work on per-example outcomes of the same test set, so they account for its size: a gain of
two points on 50 examples is noise, on 5,000 it is not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

#: Below this many discordant pairs McNemar's chi-square approximation is poor; use the exact test.
EXACT_BELOW = 25


def bootstrap_ci(
    statistic: Callable[..., float],
    *samples: Sequence[Any],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of a statistic of paired per-example samples.

    Resamples examples with replacement (the arrays together, so pairs stay pairs) and takes the
    central `confidence` share of the statistic's values (scipy.stats.bootstrap, percentile
    method — robust when every resample gives the same value, e.g. accuracy 1.0).

    Args:
        statistic: `f(*resampled_samples) -> float`, e.g. `accuracy_score`.
        *samples: Equally long sequences (e.g. y_true, y_pred).
        n_resamples: Bootstrap resamples; 0 means "no interval" and returns None.
        confidence: Interval coverage.
        seed: Seed of the resampling (the same seed gives the same interval).

    Returns:
        `(low, high)`, or None when `n_resamples` is 0.

    >>> low, high = bootstrap_ci(lambda x: float(np.mean(x)), [0, 1] * 50, seed=0)
    >>> 0.39 < low < 0.5 < high < 0.61
    True
    """
    if n_resamples == 0:
        return None
    arrays = tuple(np.asarray(s, dtype=object) for s in samples)
    res = stats.bootstrap(
        arrays,
        lambda *xs: statistic(*(x.tolist() for x in xs)),
        paired=True,
        vectorized=False,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test of two systems on the same examples.

    Attributes:
        only_a: Examples A got right and B got wrong.
        only_b: Examples B got right and A got wrong.
        statistic: The chi-square statistic (continuity-corrected), or the smaller discordant
            count for the exact test.
        pvalue: Two-sided p-value of "A and B are equally accurate".
        method: "exact" (binomial, few discordant pairs) or "chi2".
    """

    only_a: int
    only_b: int
    statistic: float
    pvalue: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemarResult:
    """McNemar's paired test: do A and B differ in accuracy on these examples?

    Only the discordant examples count. With fewer than 25 of them the p-value is the exact
    two-sided binomial test of `only_a` in `only_a + only_b` at 1/2; otherwise the chi-square test
    with continuity correction, `(|b - c| - 1)^2 / (b + c)` on 1 degree of freedom.

    >>> r = mcnemar([True] * 10 + [False] * 2, [False] * 10 + [True] * 2)
    >>> r.only_a, r.only_b, r.method, round(r.pvalue, 4)
    (10, 2, 'exact', 0.0386)
    """
    if len(correct_a) != len(correct_b):
        raise ValueError(f"the systems were scored on different numbers of examples ({len(correct_a)} vs {len(correct_b)})")
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_a + only_b
    if discordant == 0:
        return McNemarResult(only_a, only_b, 0.0, 1.0, "exact")
    if discordant < EXACT_BELOW:
        k = min(only_a, only_b)
        return McNemarResult(only_a, only_b, float(k), float(stats.binomtest(k, discordant, 0.5).pvalue), "exact")
    chi2 = (abs(only_a - only_b) - 1) ** 2 / discordant
    return McNemarResult(only_a, only_b, float(chi2), float(stats.chi2.sf(chi2, df=1)), "chi2")


@dataclass(frozen=True)
class PairedResult:
    """A paired test of two systems' per-example scores on the same examples.

    Attributes:
        metric: Name of the per-example score (e.g. "token_f1"), for the evidence.
        method: "wilcoxon" (signed-rank) or "bootstrap" (paired bootstrap of the mean difference).
        n: Number of paired examples.
        mean_a: Mean score of system A.
        mean_b: Mean score of system B.
        diff: `mean(b - a)`; positive means B scored higher (better for a higher-is-better metric).
        ci_low: Lower end of the paired bootstrap 95% interval of `diff`.
        ci_high: Upper end of that interval.
        pvalue: Two-sided p-value of "A and B score the same".
    """

    metric: str
    method: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    pvalue: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def paired_test(
    a: Sequence[float],
    b: Sequence[float],
    *,
    metric: str = "",
    method: Literal["wilcoxon", "bootstrap"] = "wilcoxon",
    n_boot: int = 2000,
    seed: int = 0,
) -> PairedResult:
    """Do B's per-example scores differ from A's on the same examples?

    The interval is always the percentile bootstrap of the mean difference (examples resampled
    with replacement, so pairs stay pairs). The p-value is the Wilcoxon signed-rank test of the
    differences (scipy.stats.wilcoxon; zero differences dropped), or, with `method="bootstrap"`,
    twice the smaller share of bootstrap means on either side of 0 — so p < 0.05 exactly when the
    95% interval excludes 0. Identical scores give p = 1, never NaN; one example proves nothing (p = 1).

    Args:
        a: Per-example scores of system A (e.g. the served model).
        b: Per-example scores of system B (e.g. the candidate), in the same example order.
        metric: Name of the score, carried into the result.
        method: "wilcoxon" or "bootstrap" (which p-value).
        n_boot: Bootstrap resamples for the interval (and the bootstrap p-value).
        seed: Seed of the resampling (the same seed gives the same result).

    Returns:
        A PairedResult.

    Raises:
        ValueError: If the lengths differ, there are no examples, or a score is not finite.

    >>> r = paired_test([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.3, 0.5, 0.4, 0.8, 0.9, 0.7], metric="f1")
    >>> round(r.diff, 3), round(r.pvalue, 4), r.ci_low > 0
    (0.25, 0.0312, True)
    """
    if method not in ("wilcoxon", "bootstrap"):
        raise ValueError(f"paired_test: method must be 'wilcoxon' or 'bootstrap', not {method!r}")
    if len(a) != len(b):
        raise ValueError(f"paired_test: the systems were scored on different numbers of examples ({len(a)} vs {len(b)})")
    if len(a) == 0:
        raise ValueError("paired_test: no examples to compare")
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        raise ValueError(f"paired_test: {metric or 'a score'} is NaN or infinite for some example; fix the scores first")
    d = xb - xa
    diff = float(d.mean())
    if len(d) == 1 or not d.any():
        # Nothing to resample or nothing differs: the honest p-value is 1 (no evidence of a difference).
        return PairedResult(metric, method, len(d), float(xa.mean()), float(xb.mean()), diff, diff, diff, 1.0)
    boot = stats.bootstrap(
        (d,), np.mean, n_resamples=n_boot, confidence_level=0.95, method="percentile", rng=np.random.default_rng(seed)
    )
    if method == "wilcoxon":
        pvalue = float(stats.wilcoxon(d).pvalue)
    else:
        means = boot.bootstrap_distribution
        tail = min(int((means <= 0).sum()), int((means >= 0).sum()))
        # +1 in numerator and denominator: the observed sample counts as one resample, so p is never 0.
        pvalue = min(1.0, 2 * (tail + 1) / (len(means) + 1))
    return PairedResult(
        metric, method, len(d), float(xa.mean()), float(xb.mean()), diff,
        float(boot.confidence_interval.low), float(boot.confidence_interval.high), pvalue,
    )

"""The paired test of per-example scores: Wilcoxon equals scipy's, bootstrap p agrees with its interval."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from tuneloop.evaluate.stats import PairedResult, paired_test


def test_wilcoxon_pvalue_equals_scipy_on_random_scores() -> None:
    rng = np.random.default_rng(1)
    for n in (8, 30, 200):  # exact and normal-approximation regimes of scipy
        a = rng.uniform(size=n)
        b = a + rng.normal(0.05, 0.2, size=n)
        r = paired_test(a, b, metric="token_f1")
        assert r.pvalue == pytest.approx(sps.wilcoxon(b - a).pvalue)
        assert (r.metric, r.method, r.n) == ("token_f1", "wilcoxon", n)
        assert r.diff == pytest.approx(float(np.mean(b - a)))
        assert r.mean_a == pytest.approx(a.mean()) and r.mean_b == pytest.approx(b.mean())
        assert r.ci_low <= r.diff <= r.ci_high


def test_wilcoxon_hand_computed() -> None:
    # Five positive differences: the exact two-sided p is 2 * (1 / 2**5).
    assert paired_test([0] * 5, [1, 2, 3, 4, 5]).pvalue == pytest.approx(2 / 32)
    # Ranks 1..6, one negative (rank 2): subsets of ranks summing to <= 2 are {}, {1}, {2} -> 2 * 3/64.
    assert paired_test([0] * 6, [1, -2, 3, 4, 5, 6]).pvalue == pytest.approx(6 / 64)


def test_identical_scores_give_p_one_not_nan() -> None:
    for method in ("wilcoxon", "bootstrap"):
        r = paired_test([0.3, 0.5, 0.5], [0.3, 0.5, 0.5], method=method)
        assert (r.pvalue, r.diff, r.ci_low, r.ci_high) == (1.0, 0.0, 0.0, 0.0)
    assert paired_test([0.2], [0.9]).pvalue == 1.0  # one example proves nothing


def test_bootstrap_pvalue_hand_computed_and_consistent_with_interval() -> None:
    # Every difference positive: no bootstrap mean is <= 0, so p = 2 * (0 + 1) / (n_boot + 1).
    r = paired_test([0.0] * 20, [0.1 * (i % 3 + 1) for i in range(20)], method="bootstrap", n_boot=999)
    assert r.pvalue == pytest.approx(2 / 1000)
    assert r.ci_low > 0
    rng = np.random.default_rng(7)
    for shift in (0.0, 0.02, 0.05, 0.2):
        a = rng.uniform(size=60)
        b = a + rng.normal(shift, 0.2, size=60)
        r = paired_test(a, b, method="bootstrap", seed=3)
        excludes_zero = r.ci_low > 0 or r.ci_high < 0
        assert (r.pvalue < 0.05) == excludes_zero


def test_noise_is_not_significant_and_a_real_gain_is() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(size=100)
    noise = paired_test(a, a + rng.normal(0, 1e-4, size=100))
    assert noise.pvalue > 0.05 and abs(noise.diff) < 1e-3
    gain = paired_test(a, np.clip(a + 0.15 + rng.normal(0, 0.05, size=100), 0, None))
    assert gain.pvalue < 1e-6 and gain.ci_low > 0.1


def test_seeded_and_serializable() -> None:
    a, b = [0.1, 0.4, 0.2, 0.8, 0.5], [0.2, 0.3, 0.6, 0.9, 0.7]
    r = paired_test(a, b, seed=5)
    assert r == paired_test(a, b, seed=5)
    assert isinstance(r, PairedResult) and set(r.to_dict()) >= {"metric", "pvalue", "ci_low", "ci_high", "diff"}


@pytest.mark.parametrize(
    ("a", "b", "msg"),
    [([1.0], [1.0, 2.0], "different numbers"), ([], [], "no examples"), ([1.0, float("nan")], [1.0, 2.0], "NaN")],
)
def test_bad_input_is_a_clear_error(a: list, b: list, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        paired_test(a, b)

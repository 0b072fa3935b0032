"""Metrics equal scikit-learn's (property-based), text metrics, bootstrap intervals, McNemar."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from tuneloop.evaluate import baseline, curves, labels, metrics, stats, text
from tuneloop.evaluate.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
)
from tuneloop.evaluate.stats import bootstrap_ci, mcnemar
from tuneloop.evaluate.text import exact_match, generation_report, normalize_answer, rouge_l, token_f1

ALPHABET = ["a", "b", "c", "d", "e"]


@st.composite
def predictions(draw: st.DrawFn, values: list = ALPHABET) -> tuple[list, list]:
    n = draw(st.integers(1, 40))
    pool = draw(st.lists(st.sampled_from(values), min_size=1, max_size=len(values), unique=True))
    y_true = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    y_pred = draw(st.lists(st.sampled_from(values), min_size=n, max_size=n))
    return y_true, y_pred


def _sk_prfs(y_true, y_pred, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning is sklearn's only difference
        return skm.precision_recall_fscore_support(y_true, y_pred, **kw)


def _same(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-12, atol=1e-12, equal_nan=True)


@settings(max_examples=300, deadline=None)
@given(
    data=predictions(),
    average=st.sampled_from([None, "micro", "macro", "weighted"]),
    zero_division=st.sampled_from([0.0, 1.0, np.nan]),
    label_set=st.one_of(st.none(), st.lists(st.sampled_from(ALPHABET + ["z"]), min_size=1, max_size=6, unique=True)),
)
def test_prfs_equals_sklearn(data, average, zero_division, label_set) -> None:
    y_true, y_pred = data
    ours = precision_recall_fscore_support(y_true, y_pred, labels=label_set, average=average, zero_division=zero_division)
    theirs = _sk_prfs(y_true, y_pred, labels=label_set, average=average, zero_division=zero_division)
    for o, t in zip(ours[:3], theirs[:3]):
        _same(o, t)
    if average is None:
        assert ours[3].tolist() == theirs[3].tolist()
    else:
        assert ours[3] is None and theirs[3] is None


@settings(max_examples=150, deadline=None)
@given(data=predictions(values=[0, 1, 2, 3]), average=st.sampled_from(["micro", "macro", "weighted"]))
def test_scores_equal_sklearn_on_int_labels(data, average) -> None:
    y_true, y_pred = data
    kw = {"average": average, "zero_division": 0.0}
    _same(precision_score(y_true, y_pred, **kw), skm.precision_score(y_true, y_pred, **kw))
    _same(recall_score(y_true, y_pred, **kw), skm.recall_score(y_true, y_pred, **kw))
    _same(f1_score(y_true, y_pred, **kw), skm.f1_score(y_true, y_pred, **kw))
    assert accuracy_score(y_true, y_pred) == skm.accuracy_score(y_true, y_pred)


@pytest.mark.filterwarnings("ignore:A single label was found")  # sklearn's hint, not a difference
@settings(max_examples=200, deadline=None)
@given(data=predictions(), label_set=st.one_of(st.none(), st.permutations(ALPHABET)))
def test_confusion_matrix_equals_sklearn(data, label_set) -> None:
    y_true, y_pred = data
    ours = confusion_matrix(y_true, y_pred, labels=label_set)
    assert ours.tolist() == skm.confusion_matrix(y_true, y_pred, labels=label_set).tolist()


@settings(max_examples=150, deadline=None)
@given(data=predictions(), unparseable=st.lists(st.booleans(), min_size=40, max_size=40))
def test_report_with_unparseable_equals_sklearn(data, unparseable) -> None:
    # An unparseable answer is None for us; for sklearn, a value outside `labels`.
    y_true, y_pred = data
    ours_pred = [None if u else p for p, u in zip(y_pred, unparseable)]
    sk_pred = ["<none>" if p is None else p for p in ours_pred]
    rep = classification_report(y_true, ours_pred, labels=ALPHABET)
    assert rep["accuracy"] == skm.accuracy_score(y_true, sk_pred)
    present = [lb for lb in ALPHABET if lb in y_true]  # averages run over the labels in the test set
    assert rep["averaged_over"] == present
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = _sk_prfs(y_true, sk_pred, labels=present, average=avg, zero_division=0.0)
        _same([rep[avg]["precision"], rep[avg]["recall"], rep[avg]["f1"]], [p, r, f])
    p, r, f, s = _sk_prfs(y_true, sk_pred, labels=ALPHABET, average=None, zero_division=0.0)
    _same([rep["per_class"][k]["f1"] for k in ALPHABET], f)
    assert [rep["per_class"][k]["support"] for k in ALPHABET] == s.tolist()
    cm = skm.confusion_matrix(y_true, sk_pred, labels=ALPHABET + ["<none>"])[: len(ALPHABET)]
    assert rep["confusion_matrix"] == cm.tolist()
    assert rep["unparseable"] == sum(p is None for p in ours_pred)


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [
        (["a", "a", "a"], ["b", "b", "b"]),  # everything wrong, one class never true, one never predicted
        (["a"], ["a"]),  # a single example
        (["a", "b"], ["a", "b"]),  # perfect
        (["a", "a", "b"], ["a", "a", "a"]),  # a class never predicted → precision 0/0
    ],
)
@pytest.mark.parametrize("zero_division", [0.0, 1.0, np.nan])
def test_zero_division_edge_cases(y_true, y_pred, zero_division) -> None:
    for avg in (None, "micro", "macro", "weighted"):
        ours = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=zero_division)
        theirs = _sk_prfs(y_true, y_pred, average=avg, zero_division=zero_division)
        for o, t in zip(ours[:3], theirs[:3]):
            _same(o, t)


def test_zero_division_default_is_zero() -> None:
    p, r, f, s = precision_recall_fscore_support(["a", "a", "b"], ["a", "a", "a"])
    assert p.tolist() == [2 / 3, 0.0] and r.tolist() == [1.0, 0.0] and f[1] == 0.0 and s.tolist() == [2, 1]


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        f1_score(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        f1_score([], [])
    with pytest.raises(ValueError, match="average"):
        f1_score(["a"], ["a"], average="binary")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="none of the labels"):
        confusion_matrix(["a"], ["a"], labels=["z"])
    with pytest.raises(ValueError, match="one comparable type"):
        f1_score(["a", 1], ["a", 1])


@pytest.mark.parametrize("module", [metrics, text, stats, labels, curves, baseline])
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# --- text metrics ------------------------------------------------------------------------

def test_normalize_and_exact_match() -> None:
    assert normalize_answer("  An Apple, the pie! ") == "apple pie"
    assert exact_match("The Eiffel Tower.", "eiffel tower")
    assert not exact_match("Eiffel", "Eiffel Tower")


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ("", "", 1.0),
        ("", "something", 0.0),
        ("cat", "dog", 0.0),
        ("a cat sat", "the cat sat", 1.0),  # articles are dropped
        ("cat cat dog", "cat dog dog", 2 / 3),  # multiset overlap: one cat, one dog
    ],
)
def test_token_f1(pred, ref, expected) -> None:
    assert token_f1(pred, ref) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    # Cross-checked against rouge-score 0.1.2 (`RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure`,
    # no stemmer); on 3,000 random ASCII pairs the largest difference was 0.
    [
        ("the cat sat on the mat", "the cat was on the mat", 5 / 6),
        ("police killed the gunman", "the gunman kill police", 0.5),
        ("A B C D", "d c b a", 0.25),
        ("", "anything", 0.0),
        ("same words here", "Same, words; here!", 1.0),
        ("über café", "café über", 0.5),  # letters of any script are words
    ],
)
def test_rouge_l(pred, ref, expected) -> None:
    assert rouge_l(pred, ref) == pytest.approx(expected)


def test_generation_report() -> None:
    rep = generation_report(["Paris", "It is blue", ""], ["Paris.", "The sky is blue", "red"])
    assert rep["n"] == 3 and rep["exact_match"] == pytest.approx(1 / 3)
    assert rep["token_f1"] == pytest.approx((1 + token_f1("It is blue", "The sky is blue") + 0) / 3)
    assert rep["avg_words"] == pytest.approx(4 / 3) and rep["avg_reference_words"] == pytest.approx(6 / 3)
    with pytest.raises(ValueError):
        generation_report(["a"], [])


# --- bootstrap and McNemar -----------------------------------------------------------------

def test_bootstrap_interval_brackets_the_estimate_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(1)
    small = rng.random(50) < 0.7
    large = rng.random(5000) < 0.7
    lo_s, hi_s = bootstrap_ci(accuracy_score, small.tolist(), [True] * 50, n_resamples=500)
    lo_l, hi_l = bootstrap_ci(accuracy_score, large.tolist(), [True] * 5000, n_resamples=200)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 4  # width ~ 1/sqrt(n): 100x the examples, ~10x narrower
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * math.sqrt(0.7 * 0.3 / 5000), rel=0.25)


def test_bootstrap_is_seeded_paired_and_optional() -> None:
    y = ["a", "b"] * 30
    p = ["a", "a"] * 30
    f = lambda t, q: f1_score(t, q, labels=["a", "b"])  # noqa: E731
    assert bootstrap_ci(f, y, p, n_resamples=100, seed=3) == bootstrap_ci(f, y, p, n_resamples=100, seed=3)
    assert bootstrap_ci(accuracy_score, y, y, n_resamples=50) == (1.0, 1.0)  # pairs stay pairs
    assert bootstrap_ci(accuracy_score, y, p, n_resamples=0) is None


def test_mcnemar_exact_matches_binomial_test() -> None:
    a = [True] * 7 + [False] * 3 + [True] * 20
    b = [False] * 7 + [True] * 3 + [True] * 20
    r = mcnemar(a, b)
    assert (r.only_a, r.only_b, r.method) == (7, 3, "exact")
    assert r.pvalue == pytest.approx(sps.binomtest(3, 10, 0.5).pvalue)
    assert r.pvalue == pytest.approx(2 * sum(math.comb(10, k) for k in range(4)) / 2**10)


def test_mcnemar_chi2_for_many_discordant_pairs() -> None:
    # 121 vs 59 discordant pairs: the textbook example, corrected statistic (|121-59|-1)^2/180.
    a = [True] * 121 + [False] * 59 + [True] * 10
    b = [False] * 121 + [True] * 59 + [False] * 10
    b[-10:] = [True] * 10
    r = mcnemar(a, b)
    assert r.method == "chi2" and r.statistic == pytest.approx(61**2 / 180)
    assert r.pvalue == pytest.approx(sps.chi2.sf(61**2 / 180, 1)) and r.pvalue < 1e-4


def test_mcnemar_no_discordant_pairs_and_symmetry() -> None:
    assert mcnemar([True, False], [True, False]).pvalue == 1.0
    a, b = [True] * 12 + [False] * 5, [False] * 12 + [True] * 5
    assert mcnemar(a, b).pvalue == pytest.approx(mcnemar(b, a).pvalue)
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])

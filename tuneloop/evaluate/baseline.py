"""The classical baseline a user would otherwise pick: TF-IDF + logistic regression.

Trained on the run's own train split, so the comparison is fair; a fine-tuned language model that
cannot beat it is not worth serving.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline

from tuneloop.errors import TuneloopError

#: Regularisation strengths tried by cross-validation on the train split (never on the test set).
C_GRID = (0.1, 1.0, 10.0, 100.0)


def fit_baseline(texts: Sequence[str], labels: Sequence[str], *, seed: int = 0) -> Pipeline:
    """Train word 1–2-gram TF-IDF + logistic regression on (text, label) pairs.

    Args:
        texts: Training texts.
        labels: Their labels (at least two distinct).
        seed: Seed of the cross-validation folds.

    Returns:
        A fitted scikit-learn pipeline; `.predict(texts)` gives labels.

    Raises:
        TuneloopError: fewer than two classes in the training data.

    >>> model = fit_baseline(["good movie", "great film", "bad movie", "awful film"], ["pos", "pos", "neg", "neg"])
    >>> model.predict(["a good film", "an awful movie"]).tolist()
    ['pos', 'neg']
    """
    counts = Counter(labels)
    if len(counts) < 2:
        raise TuneloopError(
            f"the TF-IDF baseline needs at least two labels in the train split, found {sorted(counts)}; "
            "check the prepared train.jsonl or pass --no-baseline"
        )
    # Word 1–2-grams with sublinear tf: the usual strong text-classification baseline. newton-cg
    # converges in a handful of iterations here (lbfgs took ~10x longer on TREC).
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        LogisticRegression(C=10.0, solver="newton-cg", max_iter=1000),
    )
    folds = min(5, min(counts.values()))
    if folds < 3:  # too few examples per class to cross-validate: keep C=10, a good TF-IDF default
        return model.fit(list(texts), list(labels))
    # Choose C by stratified cross-validation on the train split (TF-IDF refit per fold: no leak).
    search = GridSearchCV(
        model,
        {"logisticregression__C": list(C_GRID)},
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        scoring="neg_log_loss",
    )
    return search.fit(list(texts), list(labels)).best_estimator_

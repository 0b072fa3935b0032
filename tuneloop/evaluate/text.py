"""Metrics of generated text against reference answers: exact match, token F1, ROUGE-L.

Exact match and token F1 use SQuAD's answer normalisation (lower case, no punctuation, no
articles "a/an/the", single spaces). ROUGE-L is the F-measure of the longest common subsequence of
words, as in Google's `rouge-score` package without stemming (its tokenizer keeps only ASCII
`[a-z0-9]`; ours keeps letters and digits of any script, so the two agree on ASCII text).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_WORD = re.compile(r"[^\W_]+")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace.

    >>> normalize_answer("The  Capital, of France!")
    'capital of france'
    """
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> bool:
    """Whether the answers are equal after `normalize_answer`.

    >>> exact_match("Paris.", "paris")
    True
    """
    return normalize_answer(prediction) == normalize_answer(reference)


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the multiset of normalised words shared by prediction and reference (SQuAD).

    Two empty answers agree (1.0); one empty answer scores 0.0.

    >>> round(token_f1("the capital is Paris", "Paris is the capital of France"), 4)
    0.75
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    # Classic dynamic programme, one row at a time: O(len(a)·len(b)) time, O(len(b)) memory.
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, start=1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: longest common word subsequence relative to both lengths.

    >>> round(rouge_l("the cat sat on the mat", "the cat was on the mat"), 4)
    0.8333
    """
    pred, ref = _WORD.findall(prediction.lower()), _WORD.findall(reference.lower())
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def generation_report(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean exact match, token F1 and ROUGE-L, and mean lengths in words, over a test set.

    >>> generation_report(["Paris", "blue"], ["Paris", "red"])["exact_match"]
    0.5
    """
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equally many predictions and references, got {len(predictions)} and {len(references)}")
    n = len(predictions)
    return {
        "n": n,
        "exact_match": sum(map(exact_match, predictions, references)) / n,
        "token_f1": sum(map(token_f1, predictions, references)) / n,
        "rouge_l": sum(map(rouge_l, predictions, references)) / n,
        "avg_words": sum(len(p.split()) for p in predictions) / n,
        "avg_reference_words": sum(len(r.split()) for r in references) / n,
    }

"""Map a generated answer to one of the task's labels, or to None ("unparseable").

Rules, in order (decided for issue 4; tests/test_evaluate.py has a case for each):
1. Case, Unicode width, punctuation and whitespace do not matter: "  Positive!" is "positive",
   and "not_spam" is the words "not spam".
2. Matching is by whole words: the answer "NUMBER" does not name the label "NUM" (add a synonym
   if it should). A label or synonym matches where its words occur consecutively in the answer.
3. A match that lies inside a longer match counts only as the longer one, so a synonym
   "not spam" → ham wins over the label "spam" in "not spam".
4. The start of the answer wins: if its first clause (up to `.`, `,`, `:`, `;`, `!`, `?` before a
   space, or a line break) names exactly one label, that is the answer — "Positive, not
   negative" → positive, "LOC. Not a person (HUM)" → LOC.
5. Otherwise the whole answer must name exactly one label: "spam or ham" names two and is
   unparseable, like an answer that names none. Unparseable answers count as wrong.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence

from tuneloop.errors import TuneloopError

_WORD = re.compile(r"[^\W_]+")  # letters and digits; `_`, `-`, `:` and the rest separate words
# A clause ends at punctuation followed by a space (so "ENTY:animal" and "3.5" stay whole) or a newline.
_CLAUSE_END = re.compile(r"[.,:;!?](?=\s|$)|\n")


def words(text: str) -> tuple[str, ...]:
    """The lower-cased words of a text, punctuation removed.

    >>> words("  Not_spam! (NUM:count)")
    ('not', 'spam', 'num', 'count')
    """
    return tuple(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


class LabelParser:
    """Turns generated answers into labels; built once per task (labels + optional synonyms).

    >>> parse = LabelParser(["ham", "spam"], synonyms={"ham": ["not spam"]})
    >>> parse("Spam."), parse("This is not spam"), parse("spam or ham"), parse("I don't know")
    ('spam', 'ham', None, None)
    """

    def __init__(self, labels: Sequence[str], synonyms: Mapping[str, Sequence[str]] | None = None) -> None:
        """Index the labels and synonyms by their words.

        Raises:
            TuneloopError: a synonym names an unknown label, has no words, or means two labels.
        """
        self.labels = list(labels)
        self._phrases: dict[tuple[str, ...], str] = {}
        for label in self.labels:
            self._add(words(label), label, f"label {label!r}")
        for label, alternatives in (synonyms or {}).items():
            if label not in self.labels:
                raise TuneloopError(
                    f"eval.synonyms names the label {label!r}, which the task does not have; "
                    f"use one of {self.labels}"
                )
            for alt in alternatives:
                self._add(words(alt), label, f"eval.synonyms[{label!r}] entry {alt!r}")

    def _add(self, phrase: tuple[str, ...], label: str, what: str) -> None:
        if not phrase:
            raise TuneloopError(f"{what} has no letters or digits, so no answer could match it")
        other = self._phrases.get(phrase)
        if other is not None and other != label:
            raise TuneloopError(f"{what} reads the same as {other!r} once case and punctuation are ignored")
        self._phrases[phrase] = label

    def _matches(self, answer: tuple[str, ...]) -> list[tuple[int, int, str]]:
        """(start, end, label) of every phrase occurring in the answer, nested ones dropped."""
        found = [
            (i, i + len(phrase), label)
            for phrase, label in self._phrases.items()
            for i in range(len(answer) - len(phrase) + 1)
            if answer[i : i + len(phrase)] == phrase
        ]
        return [
            (s, e, label) for s, e, label in found
            if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in found)
        ]

    def __call__(self, answer: str | None) -> str | None:
        """The label an answer names, or None when it names none or several (see module rules)."""
        if answer is None:
            return None
        if answer.strip() in self.labels:  # the common, cheap case: the model answered exactly
            return answer.strip()
        first_clause = _CLAUSE_END.split(answer.strip(), maxsplit=1)[0]
        for text in (first_clause, answer):
            named = {label for _, _, label in self._matches(words(text))}
            if len(named) == 1:
                return named.pop()
            if len(named) > 1:
                return None  # two labels named at the same level: ambiguous
        return None

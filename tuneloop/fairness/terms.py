"""Identity-term lists and counterfactual rewrites of a text ("he" → "she", "Brad" → "Darnell").

A term file is JSON: `{"axes": {NAME: AXIS}}`, where each AXIS has a `source`, a `license` and one of
- `swaps`: a directional map (`{"he": "she", "she": "he", ...}`) — one counterfactual per text;
- `groups`: lists aligned by position (`{"male": ["John", ...], "female": ["Mary", ...]}`) — a
  term of one group becomes the term at the same position in each other group;
- `terms`: interchangeable terms (`["Chinese", "Indian", ...]`) — any one may replace another.

Lower-case terms match any capitalisation and keep it ("He" → "She"); capitalised ones (names,
nationalities) match only as written, so the name "Will" is not the verb "will".
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.errors import TuneloopError

DEFAULT_TERMS = Path(__file__).parent / "data" / "terms.json"


@dataclass(frozen=True)
class Variant:
    """One counterfactual text: what was replaced by what, and towards which group."""

    text: str
    target: str
    swaps: tuple[tuple[str, str], ...]


@dataclass
class TermAxis:
    """One identity axis: its replacement maps, one per target group."""

    name: str
    maps: dict[str, dict[str, str]]
    source: str = ""
    license: str = ""
    member: dict[str, str] = field(default_factory=dict)  # term -> its group (for derived groups)

    def __post_init__(self) -> None:
        words = sorted({t for m in self.maps.values() for t in m} | set(self.member), key=len, reverse=True)
        # Longest terms first so "Roman Catholic" wins over "Catholic"; no letter/digit on either side.
        lower = [re.escape(w) for w in words if w == w.lower()]
        cased = [re.escape(w) for w in words if w != w.lower()]
        parts = ([f"(?i:{'|'.join(lower)})"] if lower else []) + (["|".join(cased)] if cased else [])
        self._pattern = re.compile(rf"(?<![\w'])(?:{'|'.join(parts)})(?![\w'])") if parts else None

    def find(self, text: str) -> list[re.Match[str]]:
        """Every occurrence of one of the axis's terms in `text`."""
        return list(self._pattern.finditer(text)) if self._pattern else []

    def groups_in(self, text: str) -> set[str]:
        """The groups whose terms occur in `text` (empty when none does)."""
        return {self.member[_key(m.group(0), self.member)] for m in self.find(text)
                if _key(m.group(0), self.member) in self.member}

    def variants(self, text: str, *, max_variants: int, seed: int = 0) -> list[Variant]:
        """Counterfactual rewrites of `text`, at most `max_variants`, chosen reproducibly by `seed`."""
        found = self.find(text)
        if not found:
            return []
        out = []
        for target, mapping in self.maps.items():
            v = _rewrite(text, found, mapping, target)
            if v is not None:
                out.append(v)
        if len(out) > max_variants:
            out = random.Random(f"{seed}:{text}").sample(out, max_variants)
        return out


def _key(word: str, mapping: dict[str, str]) -> str:
    return word if word in mapping else word.lower()


def _case_like(src: str, new: str) -> str:
    if src.isupper() and len(src) > 1 and new == new.lower():
        return new.upper()
    if src[:1].isupper() and new == new.lower():
        return new[:1].upper() + new[1:]
    return new


def _rewrite(text: str, found: list[re.Match[str]], mapping: dict[str, str], target: str) -> Variant | None:
    pieces, swaps, last = [], [], 0
    for m in found:
        src = m.group(0)
        new = mapping.get(_key(src, mapping))
        if new is None or new.lower() == src.lower():
            continue
        new = _case_like(src, new)
        pieces += [text[last : m.start()], new]
        swaps.append((src, new))
        last = m.end()
    if not swaps:
        return None
    return Variant("".join(pieces) + text[last:], target, tuple(swaps))


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(x, str) and x.strip() for x in value):
        raise TuneloopError(f"{where} must be a non-empty list of non-empty strings")
    return [x.strip() for x in value]


def _axis(name: str, spec: object, where: str) -> TermAxis:
    if not isinstance(spec, dict):
        raise TuneloopError(f"{where}: axis {name!r} must be an object with `swaps`, `groups` or `terms`")
    kinds = [k for k in ("swaps", "groups", "terms") if k in spec]
    if len(kinds) != 1:
        raise TuneloopError(f"{where}: axis {name!r} needs exactly one of `swaps`, `groups`, `terms` (has {kinds})")
    meta = {"source": str(spec.get("source", "")), "license": str(spec.get("license", ""))}
    if kinds == ["swaps"]:
        swaps = spec["swaps"]
        if not isinstance(swaps, dict) or not swaps or not all(isinstance(v, str) for v in swaps.values()):
            raise TuneloopError(f"{where}: axis {name!r} `swaps` must map terms to replacement terms")
        return TermAxis(name, {"swapped": {k.strip(): v.strip() for k, v in swaps.items()}}, **meta)
    if kinds == ["terms"]:
        terms = _strings(spec["terms"], f"{where}: axis {name!r} `terms`")
        return TermAxis(name, {t: {s: t for s in terms if s != t} for t in terms}, member={t: t for t in terms}, **meta)
    groups = spec["groups"]
    if not isinstance(groups, dict) or len(groups) < 2:
        raise TuneloopError(f"{where}: axis {name!r} `groups` must name at least two groups of terms")
    lists = {g: _strings(v, f"{where}: axis {name!r} group {g!r}") for g, v in groups.items()}
    maps = {g: {t: lists[g][i % len(lists[g])] for a, ts in lists.items() if a != g for i, t in enumerate(ts)}
            for g in lists}
    member = {t: g for g, ts in lists.items() for t in ts}
    return TermAxis(name, maps, member=member, **meta)


def load_terms(path: Path | None = None, axes: list[str] | None = None) -> list[TermAxis]:
    """Read a term file (default: the bundled lists, see `data/LICENSES.md`).

    Args:
        path: A JSON term file as described in the module docstring; None for the default.
        axes: Keep only these axes (None or empty: all).

    Returns:
        The axes in file order.

    Raises:
        TuneloopError: the file is missing, not JSON, not of the documented shape, or lacks an axis.
    """
    path = Path(path) if path else DEFAULT_TERMS
    if not path.is_file():
        raise TuneloopError(f"fairness.terms: term file {path} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TuneloopError(f"fairness.terms: {path} is not valid JSON ({e}); see tuneloop/fairness/terms.py") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("axes"), dict) or not raw["axes"]:
        raise TuneloopError(f'fairness.terms: {path} must hold {{"axes": {{name: {{"swaps"|"groups"|"terms": ...}}}}}}')
    loaded = [_axis(n, s, str(path)) for n, s in raw["axes"].items()]
    if axes:
        missing = sorted(set(axes) - {a.name for a in loaded})
        if missing:
            raise TuneloopError(f"fairness.axes names {missing}, which {path} does not have; use some of "
                                f"{[a.name for a in loaded]}")
        loaded = [a for a in loaded if a.name in axes]
    return loaded

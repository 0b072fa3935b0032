"""pyproject.toml declares every package tuneloop imports, so a plain `pip install tuneloop` runs.

(`.ci/wheel_smoke` checks the same from the other side: it builds the wheel, installs it into a
fresh venv and runs every command's --help and a tiny prepare.)
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports() -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in tuneloop/, with the files importing them."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "tuneloop").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "tuneloop":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    norm = lambda req: re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower().replace("_", "-")  # noqa: E731
    extras = {name: {norm(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    return {norm(r) for r in project["dependencies"]}, extras


def test_every_imported_package_is_declared() -> None:
    base, extras = _declared()
    declared = base.union(*extras.values())
    dists = packages_distributions()
    missing = {}
    for module, files in _imports().items():
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(files)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_optional_parts_are_extras_and_the_core_needs_none_of_them() -> None:
    base, extras = _declared()
    assert {"serve", "postgres", "bench", "models"} <= set(extras)
    assert {"fastapi", "uvicorn"} <= extras["serve"] and "psycopg" in extras["postgres"]
    assert not base & (extras["serve"] | extras["postgres"])
    # The server's packages are imported by tuneloop.serve only (the CLI says which extra to install).
    for module in ("fastapi", "uvicorn", "starlette", "prometheus_client"):
        assert all(f.startswith("tuneloop/serve/") for f in _imports().get(module, ())), module

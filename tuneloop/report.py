"""Self-contained HTML reports: one file, plots embedded as PNG data URIs, no external assets.

The building blocks here are shared by the data report (`tuneloop prepare`) and the run report
(`tuneloop eval`): a page, sections, tables and matplotlib figures.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;border-bottom:2px solid #3b6ea5;padding-bottom:.3rem}
h2{font-size:1.25rem;margin-top:2rem;color:#3b6ea5}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#eef3f8}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto}
.muted{color:#777;font-size:.85rem}
.warn{background:#fff4e0;border-left:4px solid #e69500;padding:.4rem .8rem}
.ok{background:#e9f7ee;border-left:4px solid #2e8b57;padding:.4rem .8rem}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:.8rem}
"""


def esc(value: Any) -> str:
    """HTML-escape any value's string form."""
    return html.escape(str(value))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{esc(value)}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; floats are shown with 4 significant digits, ints with thousands separators.

    >>> table(["a", "b"], [[1, 0.5]])
    '<table><tr><th>a</th><th>b</th></tr><tr><td class="num">1</td><td class="num">0.5</td></tr></table>'
    """
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(fig: Figure, alt: str) -> str:
    """Render a matplotlib figure as an embedded PNG `<img>` and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def section(title: str, body: str, anchor: str | None = None) -> str:
    """A titled report section; `anchor` gives it an id to link to."""
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>\n{body}\n</section>"


def page(title: str, sections: Iterable[str], subtitle: str = "") -> str:
    """A complete, self-contained HTML document."""
    sub = f'<p class="muted">{esc(subtitle)}</p>' if subtitle else ""
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>{sub}\n{body}\n</body></html>\n"
    )


def write(path: Path, html_text: str) -> Path:
    """Write a report atomically (temp file + rename) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(html_text, encoding="utf-8")
    tmp.replace(path)
    return path

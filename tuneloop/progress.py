"""Progress of long stages (train, DPO, eval): a live bar in a terminal, a plain line every few seconds elsewhere.

In CI logs, under `nohup` or with output sent to a file, a live bar prints nothing until it ends;
there a line like `training: step 40/150 · loss 1.2345 · tok/s 312 · ETA 0:05:52` appears every
`every` seconds (and at the end) instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

#: Seconds between progress lines when the output is not a terminal.
EVERY = 5.0

Update = Callable[..., None]


def _line(desc: str, unit: str, done: int, total: int, fields: dict[str, float], rate: float | None) -> str:
    parts = [f"{desc}: {unit} {done}/{total}"]
    parts += [f"{name} {value:,.4f}" if abs(value) < 100 else f"{name} {value:,.0f}" for name, value in fields.items()]
    if rate:
        parts.append(f"ETA {timedelta(seconds=round((total - done) / rate))}")
    return " · ".join(parts)


@contextlib.contextmanager
def track(desc: str, total: int, console: Console, *, completed: int = 0, unit: str = "step", disable: bool = False,
          transient: bool = False, every: float = EVERY) -> Iterator[Update]:
    """Show progress of `total` units; yields `update(done, **fields)` (fields: numbers such as loss, tok/s).

    Args:
        desc: What is running (`training`, `DPO`, `tuned model`).
        total: Units in all.
        console: Where to print (a terminal gets a live bar, anything else plain lines).
        completed: Units already done (a resumed run).
        unit: The unit's name in plain lines.
        disable: Print nothing (e.g. on every process but the first).
        transient: Clear the live bar when done (plain lines stay).
        every: Seconds between plain lines.

    Example:
        >>> import io
        >>> out = Console(file=io.StringIO(), width=200)
        >>> with track("training", 2, out, every=0) as update:
        ...     update(1, loss=0.5)
        ...     update(2, loss=0.25)
        >>> out.file.getvalue().splitlines()[-1]
        'training: step 2/2 · loss 0.2500 · ETA 0:00:00'
    """
    if disable:
        yield lambda done, **fields: None
        return
    if console.is_terminal:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[shown]}"), TimeRemainingColumn(), console=console,
                      transient=transient) as bar:
            task = bar.add_task(desc, total=total, completed=completed, shown="")

            def update_bar(done: int, **fields: float) -> None:
                bar.update(task, completed=done, shown=" ".join(f"{k} {v:,.4g}" for k, v in fields.items()))

            yield update_bar
        return
    start, last, first = time.monotonic(), -float("inf"), completed

    def update_line(done: int, **fields: float) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every or done >= total:
            rate = (done - first) / (now - start) if done > first and now > start else None
            console.print(_line(desc, unit, done, total, fields, rate), highlight=False, soft_wrap=True)
            last = now

    yield update_line

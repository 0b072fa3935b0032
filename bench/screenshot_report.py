"""Render a run report in headless Chromium and save a screenshot to look at.

Usage: `python bench/screenshot_report.py RUN/report.html [OUT.png] [--height 4000]`, or with no
report argument it builds a synthetic classification run (tests/evalfixtures.py) and shots that.
Needs Debian's chromium (`apt-get install -y chromium`). Prints the screenshot path; exits 1 if
chromium is missing or wrote nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(report: Path, out: Path, *, width: int = 1200, height: int = 3000, timeout: float = 120) -> Path:
    """Screenshot `report` (an HTML file) at `width`×`height` pixels into `out` (PNG).

    Raises:
        RuntimeError: chromium is missing, failed, or wrote no image.
    """
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium not found: apt-get update && apt-get install -y chromium")
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={width},{height}",
               report.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return out


def main() -> int:
    """Command-line entry: screenshot the given report, or a synthetic one."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", nargs="?", type=Path)
    ap.add_argument("out", nargs="?", type=Path, default=Path("/tmp/report.png"))
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--task", default="classify", choices=["classify", "generate"])
    args = ap.parse_args()
    report = args.report
    if report is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from evalfixtures import make_run

        from tuneloop.report import write_run_report

        report = write_run_report(make_run(Path(tempfile.mkdtemp()), task=args.task))
    try:
        print(screenshot(report, args.out, height=args.height))
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

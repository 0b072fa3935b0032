"""How many torch threads a compute command uses: its share of the cores actually free to it.

Two compute processes that each start one OpenMP thread per core on a 2-core machine collapse
5–10× (threads spin at barriers waiting for a thread the other process holds the core of). That
is the loop's normal case: `tuneloop serve` answers requests while `tuneloop loop` trains. So:

- The cores this process may use are its CPU affinity mask, capped by its cgroup CPU quota
  (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`).
- Every tuneloop compute process announces itself (pid, start time, threads, command) in a small
  JSON file under a per-user runtime folder and withdraws it at exit; entries of dead pids (or of a
  pid reused by another program) are ignored and removed.
- Cores kept busy by other programs (the 1-minute load average less the threads tuneloop processes
  hold) are not free either: on 2 cores at load 10, a lone trainer runs 1 thread, not 2.
- Threads given explicitly (`--threads N`) are held as given. The other processes split the cores
  that those leave free, in start order, the first ones taking the remainder: a server and a trainer
  on 2 cores take 1 each; the server goes back to 2 when the trainer exits (long-running loops call
  `refresh()` between their steps, on the thread that computes).

This is not in `distributed.py`, which is about one DDP group's collectives: the choice here is
needed by every compute command (serve and eval too) and must not import `torch.distributed`.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
# A long-running process re-reads the other processes' files at most this often (a few file reads).
REFRESH_S = 2.0
CGROUP = Path("/sys/fs/cgroup")
# Count the load of programs that are not tuneloop's as busy cores (TUNELOOP_THREADS_LOAD=0: ignore it).
LOAD_AWARE = os.environ.get("TUNELOOP_THREADS_LOAD", "1") != "0"


@dataclass(frozen=True)
class Holder:
    """A tuneloop compute process that announced itself: what it holds and whether it chose that itself."""

    pid: int
    threads: int
    command: str
    pinned: bool = False  # threads given explicitly (--threads): held as given, never re-split
    since: float = 0.0  # when it started (orders the processes that split the cores)


@dataclass(frozen=True)
class Choice:
    """The thread count chosen and why, in words a user reads in a summary."""

    threads: int
    cores: int
    reason: str


# ---------------------------------------------------------------- the pure choice


def choose(requested: int | None, affinity: int, quota: float | None, others: list[Holder], *,
           since: float = 0.0, pid: int = 0, local_world: int = 1, busy: float = 0.0) -> Choice:
    """Split the cores free to this process between it and the other tuneloop compute processes.

    Args:
        requested: Threads the user asked for (`--threads`); None chooses.
        affinity: CPUs in this process's affinity mask.
        quota: CPUs the cgroup quota allows (None: no quota).
        others: Live tuneloop compute processes other than this one.
        since: This process's start time (earlier processes take the remainder of an uneven split).
        pid: This process's pid (breaks ties in start time).
        local_world: Processes of this process's own DDP group on the machine, counted even
            before they have announced themselves.
        busy: Cores kept busy by programs that are not tuneloop's (the load average less the
            tuneloop threads; `other_load`), rounded: they are not free either.

    Returns:
        The choice, e.g. `1 thread: 2 cores, shared with tuneloop serve pid 123`.

    >>> choose(None, 2, None, [Holder(123, 2, "serve", since=1.0)], since=2.0).reason
    '1 thread: 2 cores, shared with tuneloop serve pid 123'
    """
    cores = max(1, min(affinity, math.floor(quota) if quota else affinity))
    where = f"{cores} cores" + (f" (cgroup quota {quota:g} CPUs)" if quota and math.floor(quota) < affinity else "")
    if requested:
        return Choice(requested, cores, f"{_n(requested)}: asked (--threads); {where}")
    pinned = [o for o in others if o.pinned]
    held = sum(o.threads for o in pinned)
    sharing = sorted([o for o in others if not o.pinned], key=lambda o: (o.since, o.pid))
    foreign = min(cores, round(busy))
    free = max(0, cores - held - foreign)
    n_procs = max(len(sharing) + 1, local_world)
    share, extra = divmod(free, n_procs)
    ahead = sum(1 for o in sharing if (o.since, o.pid) < (since, pid))
    threads = max(1, share + (1 if ahead < extra else 0))
    if not others and local_world == 1 and not foreign:
        return Choice(threads, cores, f"{_n(threads)}: {where} free of {affinity}" if quota else f"{_n(threads)}: {where} free")
    parts = [f"{held} held by " + ", ".join(_who(o) for o in pinned)] if pinned else []
    if foreign:
        parts.append(f"load {busy:.1f} from other programs")
    if sharing:
        parts.append("shared with " + ", ".join(_who(o) for o in sharing))
    if local_world > 1:
        parts.append(f"{local_world} processes of this run")
    return Choice(threads, cores, f"{_n(threads)}: {where}, " + "; ".join(parts))


def _n(threads: int) -> str:
    return f"{threads} thread" + ("" if threads == 1 else "s")


def _who(o: Holder) -> str:
    return f"tuneloop {o.command} pid {o.pid}" + (f" ({_n(o.threads)})" if o.pinned else "")


# ---------------------------------------------------------------- what the machine allows


def affinity_cores() -> int:
    """CPUs this process may run on (its affinity mask; all CPUs where the OS has no masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def other_load(holders_threads: int, own_threads: int = 0, loadavg: float | None = None) -> float:
    """Runnable threads of programs that are not tuneloop's: the 1-minute load average less the
    threads tuneloop processes hold (this one's included once it runs). Zero where the OS has no load average."""
    try:
        load = os.getloadavg()[0] if loadavg is None else loadavg
    except OSError:
        return 0.0
    return max(0.0, load - holders_threads - own_threads)


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` line (`"150000 100000"` -> 1.5; `"max 100000"` -> None).

    >>> parse_cpu_max("150000 100000")
    1.5
    """
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def parse_cfs(quota_us: str, period_us: str) -> float | None:
    """CPUs allowed by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (a quota of -1: none)."""
    quota = int(quota_us.strip())
    return None if quota <= 0 else quota / int(period_us.strip())


def cgroup_quota(root: Path = CGROUP, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs this process's cgroup CPU quota allows (None: no quota, or no cgroup to read).

    Reads the process's own cgroup (from /proc/self/cgroup) and, inside a container whose cgroup
    namespace shows it as the root, the root's files.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        try:
            if controllers == "":  # v2
                for d in (root / rel, root):
                    if (d / "cpu.max").is_file():
                        return parse_cpu_max((d / "cpu.max").read_text())
            elif "cpu" in controllers.split(","):  # v1
                for d in (root / controllers / rel, root / "cpu" / rel, root / controllers, root / "cpu"):
                    if (d / "cpu.cfs_quota_us").is_file():
                        return parse_cfs((d / "cpu.cfs_quota_us").read_text(), (d / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
    return None


# ---------------------------------------------------------------- announcing and finding the others


def procs_dir() -> Path:
    """The folder where tuneloop compute processes announce themselves ($TUNELOOP_PROCS_DIR,
    else $XDG_RUNTIME_DIR/tuneloop/procs, else ~/.cache/tuneloop/procs)."""
    if os.environ.get("TUNELOOP_PROCS_DIR"):
        return Path(os.environ["TUNELOOP_PROCS_DIR"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "tuneloop" / "procs"
    return Path.home() / ".cache" / "tuneloop" / "procs"


def start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if it is not running or unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name before ")" may hold spaces


def alive(pid: int, start: int | None) -> bool:
    """Whether `pid` runs and is the process that announced itself (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        pass
    now = start_time(pid) if start is not None else None
    return start is None or now is None or now == start


def announce(folder: Path, holder: Holder) -> Path:
    """Write (atomically) this process's entry: pid, start time, threads, command, pinned."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{holder.pid}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    entry = {"pid": holder.pid, "start": start_time(holder.pid), "threads": holder.threads, "command": holder.command,
             "pinned": holder.pinned, "since": holder.since}
    tmp.write_text(json.dumps(entry), encoding="utf-8")
    os.replace(tmp, path)
    return path


def withdraw(folder: Path, pid: int) -> None:
    """Remove `pid`'s entry (nothing if it is gone)."""
    (folder / f"{pid}.json").unlink(missing_ok=True)


def holders(folder: Path, exclude: int | None = None) -> list[Holder]:
    """The live tuneloop compute processes announced in `folder`; entries of dead pids are removed."""
    found = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            e = json.loads(path.read_text(encoding="utf-8"))
            h = Holder(int(e["pid"]), int(e["threads"]), str(e["command"]), bool(e.get("pinned")), float(e.get("since", 0)))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours: skip it rather than fail a training run
        if h.pid == exclude:
            continue
        if alive(h.pid, e.get("start")):
            found.append(h)
        else:
            path.unlink(missing_ok=True)
    return found


# ---------------------------------------------------------------- this process


@dataclass
class _Claim:
    command: str
    requested: int | None
    choice: Choice
    since: float
    checked: float


_claim: _Claim | None = None


def claim(command: str, requested: int | None = None) -> Choice:
    """Choose this process's torch threads, set them, and announce them to other tuneloop processes.

    Every compute command calls this once at start (again when a later stage of the same process
    asks differently); the entry is withdrawn at exit.

    Args:
        command: What this process does, shown to the others (`train`, `serve`, `eval`, ...).
        requested: Threads the user asked for (`--threads`, `train.threads`); None: the free share.

    Returns:
        The choice and why, for the command's summary.
    """
    global _claim
    first = _claim is None
    since = _claim.since if _claim else time.time()
    choice = _decide(requested, since)
    if first or choice.reason != _claim.choice.reason:
        if os.environ.get("RANK", "0") == "0":  # one line per DDP run
            print(f"threads ({command}): {choice.reason}", file=sys.stderr, flush=True)
    _claim = _Claim(command, requested, choice, since, time.monotonic())
    _apply(choice.threads)
    if first:
        atexit.register(release)
    return choice


def refresh() -> Choice | None:
    """Re-split the cores if other tuneloop processes came or went (at most every REFRESH_S seconds).

    Call it between steps on the thread that runs the model: torch's thread count is per thread.
    Returns the current choice (None when `claim` was never called).
    """
    c = _claim
    if c is None or c.requested:
        return c.choice if c else None
    if time.monotonic() - c.checked >= REFRESH_S:
        c.checked = time.monotonic()
        choice = _decide(None, c.since)
        if choice.threads != c.choice.threads:
            c.choice = choice
            _apply(choice.threads)
        elif choice.reason != c.choice.reason:
            c.choice = choice
    elif _torch_threads() != c.choice.threads:  # a new model thread: give it the current count
        _apply(c.choice.threads)
    return c.choice


def tracking(fn: F) -> F:
    """`fn` with `refresh()` before each call (for the function a server's model thread runs)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        refresh()
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def current() -> Choice | None:
    """This process's choice so far (None before `claim`)."""
    return _claim.choice if _claim else None


def reason() -> str:
    """Why this process runs the threads it runs, for a summary."""
    return _claim.choice.reason if _claim else "torch's default (tuneloop did not choose)"


def release() -> None:
    """Withdraw this process's entry (also done at exit)."""
    global _claim
    if _claim is not None:
        withdraw(procs_dir(), os.getpid())
        _claim = None


def _decide(requested: int | None, since: float) -> Choice:
    others = holders(procs_dir(), exclude=os.getpid())
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    own = _claim.choice.threads if _claim else 0  # a running process's own threads are in the load average
    busy = other_load(sum(o.threads for o in others), own) if LOAD_AWARE else 0.0
    return choose(requested, affinity_cores(), cgroup_quota(), others, since=since, pid=os.getpid(), local_world=local,
                  busy=busy)


def _apply(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    c = _claim
    if c is not None:
        try:
            announce(procs_dir(), Holder(os.getpid(), threads, c.command, bool(c.requested), c.since))
        except OSError as e:  # a read-only home must not stop training: the others just cannot see us
            print(f"warning: cannot announce threads in {procs_dir()}: {e}", file=sys.stderr)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()

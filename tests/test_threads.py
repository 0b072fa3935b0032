"""Thread choice: cores split between tuneloop processes, cgroup quotas, announce/withdraw files, `--threads`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import write_data
from tuneloop import threads
from tuneloop.threads import Holder, choose


# ---------------------------------------------------------------- the pure split


def test_alone_a_process_takes_every_core_it_may_use() -> None:
    c = choose(None, 2, None, [])
    assert (c.threads, c.reason) == (2, "2 threads: 2 cores free")


def test_a_cgroup_quota_caps_the_affinity_mask() -> None:
    c = choose(None, 8, 1.5, [])
    assert c.threads == 1 and c.cores == 1 and "cgroup quota 1.5 CPUs" in c.reason
    assert choose(None, 2, 4.0, []).threads == 2  # a quota above the mask changes nothing


def test_a_trainer_beside_a_server_takes_half_the_cores() -> None:
    serve = Holder(123, 2, "serve", since=1.0)
    c = choose(None, 2, None, [serve], since=2.0, pid=456)
    assert c.threads == 1 and c.reason == "1 thread: 2 cores, shared with tuneloop serve pid 123"
    # The server, re-checking, sees the trainer and also takes 1.
    assert choose(None, 2, None, [Holder(456, 1, "train", since=2.0)], since=1.0, pid=123).threads == 1


def test_an_uneven_split_gives_the_remainder_to_the_earliest() -> None:
    others = [Holder(1, 3, "serve", since=1.0)]
    assert choose(None, 5, None, others, since=2.0, pid=2).threads == 2
    assert choose(None, 5, None, [Holder(2, 2, "train", since=2.0)], since=1.0, pid=1).threads == 3


def test_pinned_threads_are_held_and_the_rest_is_split() -> None:
    pinned = Holder(7, 3, "serve", pinned=True)
    c = choose(None, 4, None, [pinned, Holder(8, 1, "eval", since=0.5)], since=1.0, pid=9)
    assert c.threads == 1 and "3 held by tuneloop serve pid 7 (3 threads)" in c.reason
    # Every core held by others: still one thread, never zero.
    assert choose(None, 2, None, [Holder(7, 2, "serve", pinned=True)]).threads == 1


def test_asked_threads_win() -> None:
    c = choose(3, 2, None, [Holder(1, 2, "serve")])
    assert c.threads == 3 and c.reason.startswith("3 threads: asked (--threads)")


def test_cores_busy_with_other_programs_are_not_free() -> None:
    c = choose(None, 2, None, [], busy=9.7)
    assert c.threads == 1 and c.reason == "1 thread: 2 cores, load 9.7 from other programs"
    assert choose(None, 4, None, [], busy=1.2).threads == 3
    assert choose(None, 2, None, [], busy=0.3).reason == "2 threads: 2 cores free"  # background noise is not a core
    # The load tuneloop's own processes make is not counted twice.
    assert threads.other_load(2, 1, loadavg=3.5) == 0.5 and threads.other_load(2, 0, loadavg=1.0) == 0.0


def test_a_ddp_group_counts_its_processes_before_they_announce() -> None:
    c = choose(None, 4, None, [], local_world=2)
    assert c.threads == 2 and "2 processes of this run" in c.reason


# ---------------------------------------------------------------- cgroup files


@pytest.mark.parametrize(("text", "cpus"), [("max 100000", None), ("150000 100000", 1.5), ("200000 100000\n", 2.0)])
def test_cgroup_v2_cpu_max(text: str, cpus: float | None) -> None:
    assert threads.parse_cpu_max(text) == cpus


def test_cgroup_quota_is_read_for_v2_and_v1(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    (v2 / "job").mkdir(parents=True)
    (v2 / "job" / "cpu.max").write_text("100000 100000\n")
    (tmp_path / "cg2").write_text("0::/job\n")
    assert threads.cgroup_quota(v2, tmp_path / "cg2") == 1.0
    (v1 / "cpu,cpuacct").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("250000\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cg1").write_text("4:memory:/x\n3:cpu,cpuacct:/\n0::/\n")
    assert threads.cgroup_quota(v1, tmp_path / "cg1") == 2.5
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_quota(v1, tmp_path / "cg1") is None
    assert threads.cgroup_quota(tmp_path / "nothing", tmp_path / "missing") is None


# ---------------------------------------------------------------- announce / withdraw


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_announced_processes_are_found_and_dead_ones_removed(tmp_path: Path) -> None:
    me = os.getpid()
    threads.announce(tmp_path, Holder(me, 2, "serve", since=1.0))
    threads.announce(tmp_path, Holder(os.getppid(), 1, "train", pinned=True))
    dead = _dead_pid()
    threads.announce(tmp_path, Holder(dead, 2, "train"))
    (tmp_path / "garbage.json").write_text("{not json")
    found = threads.holders(tmp_path, exclude=me)
    assert [(h.pid, h.threads, h.command, h.pinned) for h in found] == [(os.getppid(), 1, "train", True)]
    assert not (tmp_path / f"{dead}.json").exists()  # a dead pid's entry is cleaned up
    assert {h.pid for h in threads.holders(tmp_path)} == {me, os.getppid()}
    threads.withdraw(tmp_path, me)
    assert not (tmp_path / f"{me}.json").exists()


def test_a_reused_pid_does_not_count(tmp_path: Path) -> None:
    ppid = os.getppid()
    threads.announce(tmp_path, Holder(ppid, 2, "serve"))
    entry = json.loads((tmp_path / f"{ppid}.json").read_text())
    (tmp_path / f"{ppid}.json").write_text(json.dumps({**entry, "start": entry["start"] - 1}))  # another process's start
    assert threads.holders(tmp_path) == []


@pytest.fixture
def procs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNELOOP_PROCS_DIR", str(tmp_path))
    monkeypatch.setattr(threads, "affinity_cores", lambda: 2)
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    monkeypatch.setattr(threads, "LOAD_AWARE", False)  # the machine running the tests may be busy
    monkeypatch.setattr(threads, "REFRESH_S", 0.0)
    before = torch.get_num_threads()
    yield tmp_path
    threads.release()
    torch.set_num_threads(before)


def test_claim_sets_torch_threads_announces_and_follows_the_others(procs: Path) -> None:
    c = threads.claim("serve")
    assert c.threads == torch.get_num_threads() == 2
    assert json.loads((procs / f"{os.getpid()}.json").read_text())["threads"] == 2
    # A trainer starts (the parent process stands in for it): the server takes its share of 2 cores.
    threads.announce(procs, Holder(os.getppid(), 1, "train", since=1e12))
    assert threads.refresh().threads == torch.get_num_threads() == 1
    threads.withdraw(procs, os.getppid())  # the trainer exits: back to every core
    assert threads.refresh().threads == torch.get_num_threads() == 2
    threads.release()
    assert not (procs / f"{os.getpid()}.json").exists()


# ---------------------------------------------------------------- the CLI


def test_cli_threads_reaches_torch_and_the_summary(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data", "generate", n_train=16, n_val=4)
    code = ("import sys, json, torch; from tuneloop.cli import app\n"
            "try: app(sys.argv[1:])\nexcept SystemExit as e: assert not e.code, e\n"
            "print('TORCH', torch.get_num_threads())")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "TUNELOOP_PROCS_DIR": str(tmp_path / "procs")}
    proc = subprocess.run([sys.executable, "-c", code, "train", "--data", str(data), "--out", str(tmp_path / "run"),
                           "--base", str(tiny_llama), "--max-steps", "2", "--batch-size", "8", "--threads", "3"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH 3" in proc.stdout and "threads (train): 3 threads: asked (--threads)" in proc.stderr
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["threads"] == 3 and summary["threads_reason"].startswith("3 threads: asked")
    assert not list((tmp_path / "procs").glob("*.json"))  # withdrawn at exit

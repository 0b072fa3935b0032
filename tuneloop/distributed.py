"""Data-parallel training over several processes: launching them, and the few collectives the loop needs.

`tuneloop train --nproc N` starts N processes on this machine (gloo on CPU, NCCL with one GPU per
process); `torchrun` (or `accelerate launch`) may start them instead, on one or many machines: a
process that finds `WORLD_SIZE` in its environment joins that group rather than launching its own.

Every process holds the whole model (trainable weights replicated, not sharded) and takes a
disjoint share of every global micro-batch; gradients are summed across processes before the
optimizer step, so the update is exactly the single-process update on the whole global batch.
Outside a group every function here is a no-op on one process.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from tuneloop.errors import TuneloopError

T = TypeVar("T")
# Gradients are summed in flat buffers of at most this many elements (100 MB in fp32): one
# collective per bucket instead of one per tensor, without doubling a full model's memory.
BUCKET = 25_000_000
# A fork server imports these once and forks every process from it: spawning fresh interpreters
# imported torch + transformers + peft in each (~8 s of CPU apiece, at every launch), the fork
# server once per parent process. It runs no compute, so forking it is safe with OpenMP and CUDA.
PRELOAD = ("peft", "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto")


# ---------------------------------------------------------------- who am I


def launched() -> bool:
    """True in a process started by torchrun, accelerate or `launch` (WORLD_SIZE is set)."""
    return "WORLD_SIZE" in os.environ


def world() -> int:
    """Processes in the group (1 outside one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside a group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes logs, checkpoints and the model (rank 0, or the only one)."""
    return rank() == 0


def needs_launch(nproc: int) -> bool:
    """Whether `train.nproc` asks for processes that nobody has started yet."""
    return nproc > 1 and not launched()


def _device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo works on CPU tensors.
    return torch.device("cuda") if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")


# ---------------------------------------------------------------- joining and leaving a group


def init_from_env(init_method: str = "env://") -> None:
    """Join the process group described by the environment (RANK, WORLD_SIZE, ...), once.

    NCCL with one GPU per local process when CUDA is available, gloo otherwise. Does nothing outside
    a launched process or when already joined.
    """
    if not launched() or dist.is_initialized():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend, device_id = "gloo", None
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise TuneloopError(f"process {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                                "start at most one process per GPU (--nproc / --nproc-per-node)")
        torch.cuda.set_device(local_rank)
        backend, device_id = "nccl", torch.device("cuda", local_rank)
    dist.init_process_group(backend, init_method=init_method, rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]), device_id=device_id)
    atexit.register(shutdown)


def shutdown() -> None:
    """Leave the process group (safe to call twice)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, fn: Callable[..., Any], args: tuple) -> None:
    """Run `fn(*args)` in `nproc` new processes on this machine, joined in one group; wait for all.

    `fn` and `args` must be picklable (a module-level function). The processes run the caller's
    main module first, as multiprocessing does: a script must keep its own work under
    `if __name__ == "__main__":`. Ctrl-C reaches every process (they save a checkpoint and stop);
    this one waits for them.

    Raises:
        TuneloopError: a process raised one (its message), or a process failed (its traceback is on stderr).
    """
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise TuneloopError(f"train.nproc {nproc} is more than the {torch.cuda.device_count()} GPUs of this machine; "
                            "use at most one process per GPU")
    import torch.multiprocessing as mp

    mp.get_context("forkserver").set_forkserver_preload([fn.__module__, *PRELOAD])
    # A Python handler (not SIG_IGN, which new processes would inherit): the workers handle Ctrl-C.
    with tempfile.TemporaryDirectory(prefix="tuneloop-ddp-") as tmp, on_sigint(lambda signum, frame: None), _quiet_join():
        try:
            mp.start_processes(_worker, args=(nproc, tmp, fn, args), nprocs=nproc, start_method="forkserver")
        except mp.ProcessExitedException as e:
            errors = sorted(Path(tmp).glob("error-*.txt"))
            if errors:
                raise TuneloopError(errors[0].read_text(encoding="utf-8")) from None
            raise TuneloopError(f"training process {e.error_index} of {nproc} failed ({e}); see its output above") from None


def _worker(local_rank: int, nproc: int, tmp: str, fn: Callable[..., Any], args: tuple) -> None:
    """One launched process: join the group through a file (no port to pick), run, report, exit."""
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      LOCAL_WORLD_SIZE=str(nproc))
    code = 0
    try:
        init_from_env(f"file://{tmp}/rendezvous")
        fn(*args)
    except TuneloopError as e:
        Path(tmp, f"error-{local_rank}.txt").write_text(str(e), encoding="utf-8")
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # gloo aborts at interpreter exit in ~1 of 4 runs ("terminate called without an active
        # exception") after correct results; leaving without running exit handlers avoids it.
        os._exit(code)


@contextlib.contextmanager
def _quiet_join() -> Iterator[None]:
    # When one process fails (or stops at Ctrl-C) the others are ended with a logged warning per
    # process; the error that caused it is what the user needs to read.
    log = logging.getLogger("torch.multiprocessing.spawn")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def on_sigint(handler: Callable[[int, Any], None]) -> Iterator[Any]:
    """Call `handler` on Ctrl-C inside the block; yields the handler it replaced (None off the main thread,
    where signals are left alone)."""
    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield None
        return
    try:
        yield previous
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------- the loop's collectives


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of `items`: every world-th item from its rank (all of them on one process)."""
    return list(items[rank() :: world()])


def shard_group(group: list[list[T]]) -> list[list[T]]:
    """This process's share of each global micro-batch of an optimizer step; empty shares are left out.

    Strided, so that length-sorted micro-batches give every process rows of similar length.
    """
    return [part for part in (shard(rows) for rows in group) if part]


def sum_values(*values: float) -> list[float]:
    """Each value summed over all processes (float64, so token counts stay exact)."""
    if world() == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def any_true(flag: bool) -> bool:
    """Whether `flag` is true on any process (all processes get the same answer)."""
    return sum_values(float(flag))[0] > 0


def barrier() -> None:
    """Wait until every process gets here."""
    if world() > 1:
        dist.barrier()


def sum_grads(params: list[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its sum over all processes (a missing one counts as zeros)."""
    if world() == 1:
        return
    for p in params:
        if p.grad is None:  # this process had no rows in the step
            p.grad = torch.zeros_like(p)
    _coalesced([p.grad for p in params], dist.all_reduce)


def replicate(params: list[torch.nn.Parameter]) -> None:
    """Copy rank 0's values of `params` to every process, so all replicas start equal."""
    if world() > 1:
        with torch.no_grad():
            _coalesced([p.data for p in params], lambda flat: dist.broadcast(flat, src=0))


def seed_step(seed: int, step: int) -> None:
    """Seed this process's random numbers (dropout) from (seed, step, rank).

    Each process gets its own stream, and a resumed run draws the same numbers as an uninterrupted
    one without saving every process's RNG state. One process keeps its single stream (unchanged).
    """
    if world() > 1:
        torch.manual_seed(((seed * 1_000_003 + step) * 1_009 + rank()) % 2**63)


def _coalesced(tensors: list[torch.Tensor], op: Callable[[torch.Tensor], Any]) -> None:
    """Apply a collective `op` in place to `tensors` through flat buffers, one per dtype and bucket."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for t in [*group, None]:
            if t is None or (bucket and size + t.numel() > BUCKET):
                flat = torch.cat([b.reshape(-1) for b in bucket])
                op(flat)
                for b, part in zip(bucket, flat.split([b.numel() for b in bucket])):
                    b.copy_(part.view_as(b))
                bucket, size = [], 0
            if t is not None:
                bucket.append(t)
                size += t.numel()

"""Checkpoints of a training run: trainable weights, optimizer, scheduler, RNG and progress.

Tensors go to safetensors, plain values to JSON (nothing is pickled). Every folder is written
under a temporary name and renamed, so a crash (even SIGKILL) never leaves half a checkpoint:
the newest `step-N` folder is always complete.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, load_model, save_file, save_model


def atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    """Fill a folder through `write(tmp)` under a temporary name, then rename it to `final`."""
    tmp = final.parent / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def step_dirs(folder: Path, prefix: str) -> list[Path]:
    """The `prefix-N` folders in `folder`, by step."""
    return sorted(folder.glob(f"{prefix}-[0-9]*"), key=step_of)


def step_of(path: Path) -> int:
    """The step N of a `prefix-N` folder."""
    return int(path.name.rsplit("-", 1)[1])


def save_weights(model: torch.nn.Module, folder: Path, method: str) -> None:
    """The trainable weights: the LoRA adapter (and new head), or every weight for full fine-tuning."""
    if method == "lora":
        from peft import get_peft_model_state_dict

        save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}, folder / "adapter.safetensors")
    else:
        save_model(model, str(folder / "model.safetensors"))  # handles tied weights


def load_weights(model: torch.nn.Module, folder: Path, method: str) -> None:
    """Load what `save_weights` wrote into a model built the same way."""
    if method == "lora":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(folder / "adapter.safetensors"))
    else:
        load_model(model, str(folder / "model.safetensors"))


def _split_state(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, plain = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            (tensors if isinstance(v, torch.Tensor) else plain)[f"{idx}.{k}"] = v.contiguous() if isinstance(v, torch.Tensor) else v
    return tensors, plain


def _join_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[int, dict[str, Any]]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in [*tensors.items(), *plain.items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return state


def save(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
         progress: dict[str, Any], method: str) -> None:
    """Write a complete checkpoint folder atomically."""
    def write(d: Path) -> None:
        save_weights(model, d, method)
        sd = optimizer.state_dict()
        tensors, plain = _split_state(sd)
        save_file(tensors, d / "optimizer.safetensors")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
        save_file(rng, d / "rng.safetensors")
        state = {"progress": progress, "scheduler": scheduler.state_dict(), "python_rng": random.getstate(),
                 "optimizer": {"param_groups": sd["param_groups"], "plain": plain}}
        (d / "state.json").write_text(json.dumps(state))

    atomic_dir(folder, write)


def load(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, method: str) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from a checkpoint; return its saved progress."""
    saved = json.loads((folder / "state.json").read_text())
    load_weights(model, folder, method)
    opt = saved["optimizer"]
    optimizer.load_state_dict({"state": _join_state(load_file(folder / "optimizer.safetensors"), opt["plain"]),
                               "param_groups": opt["param_groups"]})
    scheduler.load_state_dict(saved["scheduler"])
    rng = load_file(folder / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and "cuda0" in rng:
        torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count())])
    version, internal, gauss = saved["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return saved["progress"]

"""Training state on disk for the interventions (RMU, LoRA): the trained tensors, AdamW's
moments and step, and the CPU RNG, in one safetensors file written atomically.

A long CPU run is killed more often than it finishes in one go; resuming from this file
gives the same result as an uninterrupted run. The file names its format, so a checkpoint
of one intervention is never read as another's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mneme_core.common.atomic import atomic_path


class CheckpointError(ValueError):
    """A checkpoint file that does not belong to this run; the message says to delete it."""


def save_training_state(
    path: Path, step: int, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer, fmt: str
) -> None:
    tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in params.items()}
    for n, p in params.items():
        state = opt.state.get(p, {})
        for k in ("exp_avg", "exp_avg_sq"):
            if k in state:
                tensors[f"opt/{k}/{n}"] = state[k].detach().cpu().contiguous()
        if "step" in state:
            tensors[f"opt/step/{n}"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(1).cpu()
    tensors["rng/cpu"] = torch.get_rng_state()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"step": str(step), "format": fmt})


def load_training_state(
    path: Path,
    params: dict[str, torch.nn.Parameter],
    opt: torch.optim.Optimizer,
    fmt: str,
    *,
    accept_untagged: bool = False,
) -> int:
    """Restore ``params``, the optimiser and the RNG from ``path``; returns the step to go on
    from. ``accept_untagged``: files written before checkpoints named their format."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("format") != fmt and not (accept_untagged and "format" not in meta):
        raise CheckpointError(f"{path} is not a {fmt} checkpoint; delete it to start over")
    tensors = load_file(str(path))
    missing = [n for n in params if f"param/{n}" not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint {path} was written for other tensors (no {missing[0]}); delete it")
    with torch.no_grad():
        for n, p in params.items():
            saved = tensors[f"param/{n}"]
            if saved.shape != p.shape:
                raise CheckpointError(
                    f"checkpoint {path}: {n} has shape {tuple(saved.shape)}, the run's {tuple(p.shape)}; "
                    "delete it to start over"
                )
            p.copy_(saved)
            if f"opt/exp_avg/{n}" in tensors:
                opt.state[p] = {
                    "exp_avg": tensors[f"opt/exp_avg/{n}"].to(p.device),
                    "exp_avg_sq": tensors[f"opt/exp_avg_sq/{n}"].to(p.device),
                    "step": tensors[f"opt/step/{n}"].reshape(()).to(torch.float32),
                }
    if "rng/cpu" in tensors:
        torch.set_rng_state(tensors["rng/cpu"])
    return int(meta.get("step", 0))


def resumed_steps(
    checkpoint: str | Path | None,
    params: dict[str, torch.nn.Parameter],
    opt: torch.optim.Optimizer,
    fmt: str,
    *,
    steps: int,
    desc: str,
    progress: bool,
    accept_untagged: bool = False,
) -> tuple[Path | None, int, Any]:
    """The checkpoint path, the step a run goes on from (state restored when the file
    exists) and a progress bar over the remaining steps that counts from there."""
    ckpt = Path(checkpoint) if checkpoint is not None else None
    start = 0
    if ckpt is not None and ckpt.is_file():
        start = load_training_state(ckpt, params, opt, fmt, accept_untagged=accept_untagged)
    bar = tqdm(
        range(start, steps),
        desc=desc,
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
        initial=start,
        total=steps,
    )
    return ckpt, start, bar

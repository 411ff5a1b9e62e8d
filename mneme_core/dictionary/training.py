"""Training loop for the BatchTopK cross-coder (docs/DIFFING.md): one process or many (DDP).

``train_crosscoder(activations, config)`` trains on an in-memory ``(N, 2, d)`` tensor or
an ``ActivationStore``. The last ``val_fraction`` of tokens is held out; metrics are
computed there with the inference threshold.

Loop, per step (global batch ``B = training.batch_size`` tokens):

* each rank reads its ``B / world_size`` slice of the global batch (the store's
  ``iter_batches(rank=, world_size=)``), so W processes see exactly the tokens one
  process sees, and BatchTopK keeps the top ``k · B/W`` pairs of its slice;
* loss = reconstruction + α·aux-k (``BatchTopKCrossCoder.training_loss``); with
  ``training.balance_models`` each model's reconstruction error is weighted by its inverse
  variance on the normalisation sample (``BatchTopKCrossCoder.model_weights_for``); gradients
  averaged by DDP (gloo on CPU, NCCL on GPU), clipped to ``grad_clip``, Adam (fused);
* learning rate: linear warm-up over ``warmup_steps``, constant, then linear decay to 0
  over the last 20 % of steps (shrinks the final noise; standard for sparse coders);
* dead-latent counters (tokens since a latent last fired, in *global* tokens) are
  updated from the all-reduced "fired in this batch" mask, so every rank agrees on the
  dead set the aux loss uses;
* threshold θ: not estimated during training (BatchTopK needs none); after the last step
  it is calibrated on the first half of the held-out tokens so the mean L0 there is k
  (``BatchTopKCrossCoder.calibrate_threshold``), and the metrics are computed on the
  second half, so the reported ``l0_over_k`` is measured on tokens θ never saw;
* every ``checkpoint_every`` steps (and at the end) rank 0 writes a checkpoint: a folder
  ``step_XXXXXXXX`` with model, optimizer and trainer tensors as safetensors and a
  ``state.json``, assembled in a temp folder and renamed (atomic). A later call resumes
  from the newest one — same batches (the shuffle is seeded per epoch), same result.

Normalisation: the shared scale (``BatchTopKCrossCoder.fit_normalization``) comes from
the first training tokens in shuffled order (≤ 256 MB of them, at least one batch),
identical on every rank.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.distributed as dist
from torch import nn

from mneme_core.common.atomic import atomic_write_json, fsync_file
from mneme_core.common.config import (
    ConfigError,
    CrossCoderConfig,
    StudyConfig,
    TrainingConfig,
)
from mneme_core.common.distributed import join_process_group
from mneme_core.dictionary.crosscoder import (
    BatchTopKCrossCoder,
    CrossCoderFileError,
    LossOutput,
    read_weights,
)

CHECKPOINT_PREFIX = "step_"
KEEP_CHECKPOINTS = 2
NORM_SAMPLE_BYTES = 256 << 20  # the normalisation sample: at most 65,536 tokens at d=512
# _Plan fields added after checkpoints existed, with the behaviour a checkpoint without them had
PLAN_FIELDS_ADDED: dict[str, Any] = {"balance_models": False}
DECAY_FRACTION = 0.2


class Activations(Protocol):
    """What the trainer needs from a data source (``ActivationStore`` has it)."""

    @property
    def n_tokens(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    # Options by keyword only: the trainer names each one, so a source may add its own
    # (``ActivationStore`` has ``buffer_shards``) without matching positions.
    def iter_batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        start: int = 0,
        stop: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> Iterator[torch.Tensor]: ...


class InMemoryActivations:
    """An ``(N, 2, d)`` tensor behind the store's ``iter_batches`` contract.

    Same semantics as ``ActivationStore.iter_batches``: ``batch_size`` is per rank; each
    global batch of ``batch_size · world_size`` tokens is split between ranks in order.
    """

    def __init__(self, x_N2d: torch.Tensor):
        if not isinstance(x_N2d, torch.Tensor) or x_N2d.dim() != 3 or x_N2d.shape[1] != 2:
            shape = tuple(x_N2d.shape) if isinstance(x_N2d, torch.Tensor) else type(x_N2d).__name__
            raise ValueError(
                f"activations must be a (N, 2, d) tensor (base, fine-tuned) or an ActivationStore; got {shape}"
            )
        if not x_N2d.is_floating_point():
            raise ValueError(f"activations must be floating point, got {x_N2d.dtype}")
        self.x = x_N2d

    @property
    def n_tokens(self) -> int:
        return self.x.shape[0]

    @property
    def d_model(self) -> int:
        return self.x.shape[2]

    def iter_batches(self, batch_size, shuffle=True, seed=0, start=0, stop=None, rank=0, world_size=1, drop_last=False):
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        idx = torch.arange(start, stop)
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
        global_bs = batch_size * world_size
        n_full = len(idx) // global_bs
        for b in range(n_full):
            yield self.x[idx[b * global_bs + rank * batch_size : b * global_bs + (rank + 1) * batch_size]].float()
        rest = idx[n_full * global_bs :]
        if len(rest) >= world_size and not drop_last:
            yield self.x[torch.tensor_split(rest, world_size)[rank]].float()


# --------------------------------------------------------------------------- distribution


@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor, op=None) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _distribution(device: str | torch.device | None) -> _Dist:
    """Join the process group ``torchrun`` describes (if any) and pick this rank's device
    (``None``: "auto", this rank's GPU where there is one)."""
    from mneme_core.collect.models import resolve_device

    rank, world, dev = join_process_group(resolve_device(str(device or "auto")))
    return _Dist(rank, world, dev)


def _data_parallel(module: nn.Module) -> nn.Module:
    """DDP without syncing buffers on every forward: the cross-coder's buffers (normalisation
    scale, threshold) are equal on every rank and fixed while training. torch 2.13 renamed
    that switch and warns on the old name, which older releases still need; the new one
    still broadcasts the buffers once when DDP is built, which changes nothing here."""
    ddp = nn.parallel.DistributedDataParallel
    switch = (
        "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else "broadcast_buffers"
    )
    options: dict[str, Any] = {switch: False}
    return ddp(module, **options)


class _LossModule(nn.Module):
    """What DDP wraps: forward = the training loss, so DDP syncs the model's gradients."""

    def __init__(self, model: BatchTopKCrossCoder):
        super().__init__()
        self.model = model

    def forward(self, x_n, dead_F, tcfg: TrainingConfig, k_aux: int, compute_dtype, model_weights) -> LossOutput:
        return self.model.training_loss(
            x_n,
            dead_F,
            k_aux=k_aux,
            aux_alpha=tcfg.aux_alpha,
            sparse=tcfg.sparse,
            compute_dtype=compute_dtype,
            model_weights=model_weights,
        )


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Plan:
    """Sizes derived from the config and the data, fixed for a run (and its resumes)."""

    d_model: int
    n_latents: int
    k: int
    selection_norm: Literal["l2", "l2_squared"]
    batch_size: int
    n_train: int
    n_val: int
    total_steps: int
    steps_per_epoch: int
    lr: float
    k_aux: int
    seed: int
    balance_models: bool

    def fingerprint(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _split_config(config, crosscoder) -> tuple[TrainingConfig, CrossCoderConfig]:
    if isinstance(config, StudyConfig):
        return config.training, config.crosscoder
    if isinstance(config, TrainingConfig):
        return config, crosscoder or CrossCoderConfig()
    raise TypeError(
        f"config must be a StudyConfig or a TrainingConfig (with crosscoder=CrossCoderConfig(...)); got {type(config).__name__}"
    )


def _plan(data: Activations, tcfg: TrainingConfig, ccfg: CrossCoderConfig, world: int) -> _Plan:
    d = data.d_model
    F_ = ccfg.n_latents or ccfg.expansion * d
    if ccfg.k > F_:
        raise ConfigError(f"crosscoder.k ({ccfg.k}) must not exceed the number of latents ({F_})")
    n_val = max(2, int(round(data.n_tokens * tcfg.val_fraction)))  # halves: θ calibration, metrics
    n_train = data.n_tokens - n_val
    B = tcfg.batch_size
    if B % world:
        raise ConfigError(f"training.batch_size ({B}) must be divisible by the number of processes ({world})")
    if n_train < B:
        raise ConfigError(
            f"the training split has {n_train} tokens, fewer than training.batch_size ({B}): "
            "lower training.batch_size or collect more tokens (corpus.n_tokens)"
        )
    steps = max(1, (tcfg.n_tokens or n_train) // B)
    lr = tcfg.lr or 1e-4 * math.sqrt(16384 / F_)
    return _Plan(
        d,
        F_,
        ccfg.k,
        ccfg.selection_norm,
        B,
        n_train,
        n_val,
        steps,
        n_train // B,
        lr,
        tcfg.k_aux or max(1, d // 2),
        tcfg.seed,
        tcfg.balance_models,
    )


def _lr_at(step: int, plan: _Plan, warmup: int) -> float:
    """Linear warm-up, constant, linear decay to 0 over the last DECAY_FRACTION of steps."""
    scale = min(1.0, (step + 1) / max(1, warmup))
    decay_start = int(plan.total_steps * (1 - DECAY_FRACTION))
    if step >= decay_start:
        scale *= max(0.0, (plan.total_steps - step) / max(1, plan.total_steps - decay_start))
    return plan.lr * scale


# --------------------------------------------------------------------------- training


@dataclass
class _State:
    """Trainer state beyond model + optimizer (all of it goes into checkpoints)."""

    step: int
    tokens_seen: int
    since_fired_F: torch.Tensor  # global tokens since each latent last fired
    model_weights: torch.Tensor | None = None  # (2,) loss weight per model (balance_models), fixed at the start
    last_loss: float = float("nan")
    train_seconds: float = 0.0


def train_crosscoder(
    activations: torch.Tensor | Activations,
    config: StudyConfig | TrainingConfig,
    crosscoder: CrossCoderConfig | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    stop_after: int | None = None,
) -> tuple[BatchTopKCrossCoder, dict[str, Any]]:
    """Train a BatchTopK cross-coder; return it with its validation metrics.

    activations: raw ``(N, 2, d)`` float tensor (base, fine-tuned) or an ``ActivationStore``.
    config: a ``StudyConfig`` (its ``training`` and ``crosscoder`` sections are used) or a
        ``TrainingConfig`` together with ``crosscoder`` (default ``CrossCoderConfig()``).
    checkpoint_dir: where checkpoints go; if it holds one from the same plan, training
        resumes from the newest. ``None``: no checkpoints.
    device: ``None``/"auto" = this rank's GPU if there is one, else CPU.
    stop_after: stop after this many steps *in this call* (checkpointing first), e.g. to
        fit a time slot; the next call resumes. Metrics are still computed.

    Under ``torchrun`` every rank calls this; ranks read their slice of each batch, and
    only rank 0 writes checkpoints. Every rank returns the same model and metrics.
    """
    tcfg, ccfg = _split_config(config, crosscoder)
    data: Activations = InMemoryActivations(activations) if isinstance(activations, torch.Tensor) else activations
    dd = _distribution(device)
    plan = _plan(data, tcfg, ccfg, dd.world)
    local_bs = plan.batch_size // dd.world
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    compute_dtype = torch.bfloat16 if tcfg.dtype == "bfloat16" else torch.float32

    model = BatchTopKCrossCoder(plan.d_model, plan.n_latents, plan.k, plan.selection_norm, seed=plan.seed).to(dd.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=plan.lr, fused=True)
    state = _State(0, 0, torch.zeros(plan.n_latents, dtype=torch.long, device=dd.device))
    latest = _latest_checkpoint(ckpt_dir) if ckpt_dir is not None else None
    if latest is not None:
        _load_checkpoint(latest, plan, model, optimizer, state)
    else:
        n_sample = min(plan.n_train, max(plan.batch_size, NORM_SAMPLE_BYTES // (8 * plan.d_model)))
        sample = next(
            iter(data.iter_batches(n_sample, shuffle=True, seed=plan.seed, stop=plan.n_train, drop_last=True))
        ).to(dd.device)
        model.fit_normalization(sample)
        model.init_decoder_bias(sample[: min(len(sample), plan.batch_size)])
        if plan.balance_models:
            state.model_weights = model.model_weights_for(sample)

    step_fn: nn.Module = _LossModule(model)  # or its DDP wrapper
    if dd.world > 1:
        step_fn = _data_parallel(step_fn)

    bar = _progress_bar(plan, state, enabled=progress and dd.main)
    start_step, t0 = state.step, time.perf_counter()
    end_step = plan.total_steps if stop_after is None else min(plan.total_steps, state.step + stop_after)
    batches = _batches(data, plan, state.step, local_bs, dd)
    try:
        while state.step < end_step:
            x = next(batches)
            _train_step(step_fn, model, optimizer, x.to(dd.device), state, plan, tcfg, dd, compute_dtype)
            bar.update(plan.batch_size)
            if state.step % 10 == 0 or state.step == plan.total_steps:
                bar.set_postfix(loss=f"{state.last_loss:.4g}", dead=f"{_dead(state, tcfg).float().mean():.1%}")
            if ckpt_dir is not None and state.step % tcfg.checkpoint_every == 0:
                _save_checkpoint(ckpt_dir, plan, model, optimizer, state, dd)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    state.train_seconds += elapsed
    if ckpt_dir is not None and state.step > start_step:
        _save_checkpoint(ckpt_dir, plan, model, optimizer, state, dd)

    n_calib = plan.n_val // 2
    calib = data.iter_batches(local_bs * dd.world, shuffle=False, start=plan.n_train, stop=plan.n_train + n_calib)
    model.calibrate_threshold(b.to(dd.device) for b in calib)
    metrics: dict[str, Any] = evaluate(model, data, start=plan.n_train + n_calib, batch_size=local_bs, dd=dd)
    metrics["l0_over_k"] = metrics["l0"] / plan.k
    metrics["n_calibration_tokens"] = n_calib
    trained = (state.step - start_step) * plan.batch_size
    metrics.update(
        steps=state.step,
        total_steps=plan.total_steps,
        tokens_seen=state.tokens_seen,
        n_train_tokens=plan.n_train,
        n_latents=plan.n_latents,
        k=plan.k,
        lr=plan.lr,
        batch_size=plan.batch_size,
        world_size=dd.world,
        threshold=float(model.threshold),
        final_loss=state.last_loss,
        train_seconds=round(state.train_seconds, 3),
        tokens_per_s=round(trained / elapsed, 1) if trained and elapsed > 0 else None,
        dead_fraction_train=float(_dead(state, tcfg).float().mean()),
        model_loss_weights=None if state.model_weights is None else [round(float(w), 4) for w in state.model_weights],
    )
    return model, metrics


def _batches(data: Activations, plan: _Plan, step: int, local_bs: int, dd: _Dist) -> Iterator[torch.Tensor]:
    """This rank's batches from global step ``step`` on, epoch after epoch (seed + epoch)."""
    epoch, skip = divmod(step, plan.steps_per_epoch)
    while True:
        it = data.iter_batches(
            local_bs,
            shuffle=True,
            seed=plan.seed + epoch,
            start=0,
            stop=plan.n_train,
            rank=dd.rank,
            world_size=dd.world,
            drop_last=True,
        )
        for i, x in enumerate(it):
            if i >= skip:
                yield x
        epoch, skip = epoch + 1, 0


def _dead(state: _State, tcfg: TrainingConfig) -> torch.Tensor:
    return state.since_fired_F >= tcfg.dead_tokens


def _train_step(
    step_fn, model, optimizer, x, state: _State, plan: _Plan, tcfg: TrainingConfig, dd: _Dist, compute_dtype
) -> None:
    for group in optimizer.param_groups:
        group["lr"] = _lr_at(state.step, plan, tcfg.warmup_steps)
    with torch.no_grad():
        x_n = model.normalize(x)
    out: LossOutput = step_fn(x_n, _dead(state, tcfg), tcfg, plan.k_aux, compute_dtype, state.model_weights)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
    optimizer.step()
    with torch.no_grad():
        # One all-reduce for the fired mask and the loss.
        packed = torch.cat([out.fired_F.float(), out.loss.detach().reshape(1).float()])
        dd.all_reduce(packed)
        fired = packed[: plan.n_latents] > 0
        loss = float(packed[-1]) / dd.world
        state.since_fired_F = torch.where(fired, 0, state.since_fired_F + plan.batch_size)
        state.step += 1
        state.tokens_seen += plan.batch_size
        state.last_loss = loss


def _progress_bar(plan: _Plan, state: _State, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=plan.total_steps * plan.batch_size,
        initial=state.step * plan.batch_size,
        unit="tok",
        unit_scale=True,
        desc="train cross-coder",
        disable=not enabled,
        dynamic_ncols=True,
    )


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: BatchTopKCrossCoder,
    activations: torch.Tensor | Activations,
    start: int = 0,
    stop: int | None = None,
    batch_size: int = 4096,
    dd: _Dist | None = None,
) -> dict[str, float]:
    """Held-out metrics with the inference threshold, per model (normalised space).

    ``fve_m = 1 − Σ_dims Var(x_m − x̂_m) / Σ_dims Var(x_m)`` over the tokens;
    ``mse_m`` = mean squared error per element; ``l0`` = mean active latents per token;
    ``dead_fraction`` = share of latents that never fire on these tokens.
    """
    data = InMemoryActivations(activations) if isinstance(activations, torch.Tensor) else activations
    dd = dd or _Dist(0, 1, model.W_dec.device)
    dev = model.W_dec.device
    d = model.d_model
    sums = torch.zeros(4, 2, d, dtype=torch.float64, device=dev)  # Σx, Σx², Σe, Σe² per model and dim
    counts = torch.zeros(2, dtype=torch.float64, device=dev)  # tokens, Σ L0
    fired = torch.zeros(model.n_latents, dtype=torch.float64, device=dev)
    for x in data.iter_batches(batch_size, shuffle=False, start=start, stop=stop, rank=dd.rank, world_size=dd.world):
        x = x.to(dev)
        f = model.encode(x)
        x_n = model.normalize(x).double()
        e = x_n - model.decode(f, normalized=True).double()
        sums[0] += x_n.sum(0)
        sums[1] += x_n.pow(2).sum(0)
        sums[2] += e.sum(0)
        sums[3] += e.pow(2).sum(0)
        active = f > 0
        counts[0] += x.shape[0]
        counts[1] += active.sum()
        fired += active.any(0)
    dd.all_reduce(sums)
    dd.all_reduce(counts)
    dd.all_reduce(fired)
    n = float(counts[0])
    if n == 0:
        raise ValueError("no validation tokens to evaluate on")
    var_x = (sums[1] / n - (sums[0] / n) ** 2).sum(-1)  # (2,)
    var_e = (sums[3] / n - (sums[2] / n) ** 2).sum(-1)
    mse = sums[3].sum(-1) / (n * d)
    out: dict[str, float] = {
        "n_val_tokens": int(n),
        "l0": float(counts[1]) / n,
        "dead_fraction": float((fired == 0).double().mean()),
    }
    for m, name in enumerate(("base", "ft")):
        out[f"fve_{name}"] = float(1 - var_e[m] / var_x[m].clamp_min(1e-30))
        out[f"mse_{name}"] = float(mse[m])
    return out


# --------------------------------------------------------------------------- checkpoints


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """Newest complete checkpoint folder (a folder exists only once complete)."""
    if not ckpt_dir.is_dir():
        return None
    done = sorted(p for p in ckpt_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.json").is_file())
    return done[-1] if done else None


def _save_checkpoint(ckpt_dir: Path, plan: _Plan, model, optimizer, state: _State, dd: _Dist) -> None:
    if dd.main:
        from safetensors.torch import save_file

        final = ckpt_dir / f"{CHECKPOINT_PREFIX}{state.step:08d}"
        if not final.exists():
            for stale in ckpt_dir.glob(f".tmp-{CHECKPOINT_PREFIX}*"):  # left by a save that crashed
                shutil.rmtree(stale, ignore_errors=True)
            tmp = ckpt_dir / f".tmp-{final.name}-{os.getpid()}"
            tmp.mkdir(parents=True)
            tensors = {f"model.{k}": v for k, v in model.tensors().items()}
            opt = optimizer.state_dict()
            for i, st in opt["state"].items():
                for key, value in st.items():
                    tensors[f"optim.{i}.{key}"] = value.detach().cpu().contiguous()
            tensors["trainer.since_fired"] = state.since_fired_F.cpu()
            if state.model_weights is not None:
                tensors["trainer.model_weights"] = state.model_weights.cpu()
            save_file(tensors, str(tmp / "tensors.safetensors"))
            fsync_file(tmp / "tensors.safetensors")  # on disk before the folder is renamed into place
            atomic_write_json(
                tmp / "state.json",
                {
                    "plan": plan.fingerprint(),
                    "step": state.step,
                    "tokens_seen": state.tokens_seen,
                    "last_loss": state.last_loss,
                    "train_seconds": state.train_seconds,
                    "param_groups": opt["param_groups"],
                    "model_config": model.config_dict(),
                },
            )
            os.replace(tmp, final)
            for old in sorted(ckpt_dir.glob(f"{CHECKPOINT_PREFIX}*"))[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
    dd.barrier()


def _load_checkpoint(path: Path, plan: _Plan, model, optimizer, state: _State) -> None:
    try:
        saved = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CrossCoderFileError(
            f"checkpoint {path} has an unreadable state.json ({exc}); delete that folder to resume from an earlier one"
        ) from exc
    # a plan saved before a field existed had that field's old behaviour
    saved_plan = PLAN_FIELDS_ADDED | saved.get("plan", {})
    changed = {k: (v, plan.fingerprint().get(k)) for k, v in saved_plan.items() if plan.fingerprint().get(k) != v}
    if changed:
        key, (old, new) = next(iter(changed.items()))
        raise ConfigError(
            f"checkpoint {path} belongs to a different training plan ({key}: {old!r} then, {new!r} now). "
            f"Restore the config, or delete {path.parent} to train from scratch."
        )
    tensors = read_weights(path / "tensors.safetensors")
    model.load_tensors({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, source=str(path))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, i, key = name.split(".", 2)
            opt_state.setdefault(int(i), {})[key] = value  # load_state_dict places them per param
    optimizer.load_state_dict({"state": opt_state, "param_groups": saved["param_groups"]})
    state.step, state.tokens_seen = int(saved["step"]), int(saved["tokens_seen"])
    state.last_loss, state.train_seconds = float(saved["last_loss"]), float(saved["train_seconds"])
    state.since_fired_F = tensors["trainer.since_fired"].to(model.W_dec.device)
    if plan.balance_models:  # the plan check above guarantees a balanced checkpoint saved them
        state.model_weights = tensors["trainer.model_weights"].to(model.W_dec.device)


# --------------------------------------------------------------------------- stage


def run_stage(cfg: StudyConfig, run_path: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train stage: ``run_path/activations`` → ``run_path/crosscoder`` (+ checkpoints).

    Resumes from ``crosscoder/checkpoints``; a run whose training finished but whose model
    was not yet saved only re-evaluates. Returns the validation metrics.
    """
    from mneme_core.collect.activations import ActivationStore

    run_path = Path(run_path)
    out_dir = run_path / "crosscoder"
    store = ActivationStore(run_path / "activations")
    model, metrics = train_crosscoder(
        store,
        cfg,
        checkpoint_dir=out_dir / "checkpoints",
        progress=progress,
        device=None if cfg.models.device == "auto" else cfg.models.device,
    )
    if not dist.is_initialized() or dist.get_rank() == 0:
        model.save(out_dir)
        atomic_write_json(out_dir / "metrics.json", metrics)
    if dist.is_initialized():
        dist.barrier()
    return metrics

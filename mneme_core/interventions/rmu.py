"""RMU unlearning (Representation Misdirection for Unlearning; Li et al. 2024, the WMDP paper).

At an early-middle layer ``l``, with ``h_l`` the residual stream after decoder layer ``l``:

    loss = mean_tokens ||h_l^upd(forget) - c·u||² / d
         + α · mean_tokens ||h_l^upd(retain) - h_l^frozen(retain)||² / d

``u`` is one fixed random unit vector (drawn like the reference code: uniform [0, 1)
entries, normalised), ``c`` the steering coefficient. Only the MLP weights of layers
``l-2 .. l`` are trained (the reference code trains ``down_proj`` only — our default; set
``params`` to add ``gate_proj`` / ``up_proj``). Forget text is pushed to a meaningless,
large activation, which scrambles everything the later layers compute from it, while retain
text keeps its frozen activations. Both terms are per-element means, as in the reference
code's ``mse_loss``; we additionally drop padding positions from the means.

Reference settings for Zephyr-7B: l = 7 (of 32), layers 5–7, c = 6.5, α = 1200,
lr = 5e-5, 150 batches of 4, AdamW. Our defaults keep l, the layers, the batches and the
optimiser, and were checked on SmolLM2-135M (the demo): lr = 1e-3 (a 135M model needs a
larger step than a 7B one to move in 150 steps), α = 100 (balances the two terms at our c).
``c`` only makes sense relative to the activation norm at ``l``, which differs between
models, so ``steering_coef = 0`` (our default) sets
``c = steering_scale × median ‖h_l^frozen(forget)‖`` over the tokens of the first forget
batch (the median, because the first token of a sequence carries a "massive activation"
many times the typical norm in models like Llama and SmolLM2), and the metrics record the
``c`` used.

Only layers up to ``l`` ever run (``models.truncated_forward``): RMU's loss lives at ``l``.
Long runs checkpoint the trained tensors and the optimiser state, so a killed run resumes.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mneme_core.collect.models import (
    decoder_layers,
    hidden_size_of,
    resolve_layer,
    save_delta,
    truncated_forward,
)
from mneme_core.interventions.checkpoint import resumed_steps, save_training_state

CHECKPOINT_FORMAT = "mneme-rmu-checkpoint-1"


class RMUError(ValueError):
    """Bad RMU settings or inputs; the message says what to change."""


@dataclass(frozen=True)
class RMUConfig:
    layer: int = 7  # l: residual stream after this decoder layer is steered
    n_update_layers: int = 3  # train layers l-n+1 .. l (the paper: l-2 .. l)
    params: tuple[str, ...] = ("down_proj",)  # MLP weight names to train in those layers
    steering_coef: float = 0.0  # c; 0 = steering_scale × median forget token norm at l
    steering_scale: float = 4.0
    alpha: float = 100.0  # weight of the retain term
    lr: float = 1e-3  # reference (7B models): 5e-5
    steps: int = 150
    batch_size: int = 4
    max_tokens: int = 128  # forget / retain sequences are truncated to this
    seed: int = 0
    checkpoint_every: int = 50

    def validate(self) -> None:
        for name in ("steps", "batch_size", "max_tokens", "n_update_layers"):
            if getattr(self, name) <= 0:
                raise RMUError(f"rmu.{name} must be > 0, got {getattr(self, name)!r}")
        if self.lr <= 0 or self.alpha < 0 or self.steering_coef < 0 or self.steering_scale <= 0:
            raise RMUError("rmu: need lr > 0, alpha >= 0, steering_coef >= 0 (0 = auto), steering_scale > 0")
        if not self.params:
            raise RMUError("rmu.params is empty: name the MLP weights to train, e.g. ['down_proj']")


@dataclass
class RMUResult:
    model: torch.nn.Module
    direction: torch.Tensor  # u, unit vector (d,)
    steering_coef: float
    trained: list[str]  # parameter names that were updated
    metrics: dict[str, Any]


def random_direction(d: int, seed: int) -> torch.Tensor:
    """The fixed unit vector u (uniform [0, 1) entries, normalised, as in the reference code)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(d, generator=g)
    return u / u.norm()


def trainable_parameters(
    model: torch.nn.Module, layer: int, n_layers: int, params: Sequence[str]
) -> dict[str, torch.nn.Parameter]:
    """Parameters RMU may change: the named MLP weights of layers ``layer-n+1 .. layer``."""
    blocks = decoder_layers(model)
    first = max(0, layer - n_layers + 1)
    block_ids = {id(blocks[i]): i for i in range(first, layer + 1)}
    out: dict[str, torch.nn.Parameter] = {}
    for name, module in model.named_modules():
        if id(module) in block_ids:
            for pname, p in module.named_parameters():
                if ("mlp" in pname or "feed_forward" in pname) and pname.split(".")[-2] in params:
                    out[f"{name}.{pname}"] = p
    if len(out) < (layer - first + 1) * len(params):
        raise RMUError(
            f"found {len(out)} of the {(layer - first + 1) * len(params)} MLP weights {list(params)} in layers "
            f"{first}..{layer}; name them as the model does (Llama: gate_proj, up_proj, down_proj)"
        )
    return out


def _pad_batch(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> dict[str, torch.Tensor]:
    """Right-padded ids + attention mask for ``texts``, each truncated to ``max_tokens``."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    enc = [tokenizer(t, truncation=True, max_length=max_tokens)["input_ids"] for t in texts]
    T = max(len(e) for e in enc)
    ids = torch.full((len(enc), T), pad, dtype=torch.long)
    mask = torch.zeros((len(enc), T), dtype=torch.long)
    for b, e in enumerate(enc):
        ids[b, : len(e)] = torch.tensor(e)
        mask[b, : len(e)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _batches(tokenizer: Any, texts: Sequence[str], cfg: RMUConfig, seed: int) -> list[dict[str, torch.Tensor]]:
    """``cfg.steps`` batches of ``cfg.batch_size`` texts, cycling through them in a seeded order."""
    if not texts:
        raise RMUError("RMU needs non-empty forget and retain text")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    need = cfg.steps * cfg.batch_size
    order = (order * math.ceil(need / len(order)))[:need]
    return [
        _pad_batch(tokenizer, [texts[i] for i in order[s : s + cfg.batch_size]], cfg.max_tokens)
        for s in range(0, need, cfg.batch_size)
    ]


def _masked_mse(x_BTD: torch.Tensor, target: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Per-element mean squared error over the non-padding positions."""
    err_BT = ((x_BTD - target) ** 2).mean(-1)
    m = mask_BT.to(err_BT.dtype)
    return (err_BT * m).sum() / m.sum().clamp_min(1)


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return truncated_forward(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), layer)


@torch.no_grad()
def activation_report(
    frozen: torch.nn.Module,
    updated: torch.nn.Module,
    tokenizer: Any,
    forget: Sequence[str],
    retain: Sequence[str],
    layer: int,
    direction: torch.Tensor,
    steering_coef: float,
    max_tokens: int = 128,
) -> dict[str, float]:
    """How far RMU moved activations at ``layer``, on any forget / retain texts (held out in tests).

    - ``forget_cos_before/after``: mean cosine of forget-token activations with u;
    - ``forget_target_rel_err_before/after``: mean ‖h − c·u‖ / ‖c·u‖ on forget tokens;
    - ``retain_rel_err``: mean ‖h_upd − h_frozen‖ / ‖h_frozen‖ on retain tokens;
    - ``forget_rel_change``: the same change measured on forget tokens.
    """

    def collect(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hs_f, hs_u = [], []
        for s in range(0, len(texts), 8):
            batch = _pad_batch(tokenizer, texts[s : s + 8], max_tokens)
            m = batch["attention_mask"].bool()
            hs_f.append(_forward(frozen, batch, layer).float().cpu()[m])
            hs_u.append(_forward(updated, batch, layer).float().cpu()[m])
        return torch.cat(hs_f), torch.cat(hs_u)

    u = direction.float().cpu()
    target = steering_coef * u
    f_frozen, f_upd = collect(forget)
    r_frozen, r_upd = collect(retain)
    cos = lambda h: torch.nn.functional.cosine_similarity(h, u[None], dim=-1).mean().item()  # noqa: E731
    rel = lambda a, b: ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-8)).mean().item()  # noqa: E731
    return {
        "forget_cos_before": cos(f_frozen),
        "forget_cos_after": cos(f_upd),
        "forget_target_rel_err_before": ((f_frozen - target).norm(dim=-1) / target.norm()).mean().item(),
        "forget_target_rel_err_after": ((f_upd - target).norm(dim=-1) / target.norm()).mean().item(),
        "forget_rel_change": rel(f_upd, f_frozen),
        "retain_rel_err": rel(r_upd, r_frozen),
        "mean_norm_forget": f_frozen.norm(dim=-1).mean().item(),
        "mean_norm_retain": r_frozen.norm(dim=-1).mean().item(),
    }


def rmu_unlearn(
    model: torch.nn.Module,
    tokenizer: Any,
    forget: Sequence[str],
    retain: Sequence[str],
    cfg: RMUConfig = RMUConfig(),
    *,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> RMUResult:
    """Unlearn ``forget`` text from a copy of ``model`` with RMU; ``model`` stays untouched (frozen).

    ``checkpoint``: a safetensors file for the trained tensors + optimiser state, written
    every ``cfg.checkpoint_every`` steps and read on start, so a killed run resumes.
    """
    cfg.validate()
    n_layers = len(decoder_layers(model))
    layer = resolve_layer(cfg.layer, n_layers)
    frozen = model.eval()
    updated = copy.deepcopy(model).train()
    for p in updated.parameters():
        p.requires_grad_(False)
    params = trainable_parameters(updated, layer, cfg.n_update_layers, cfg.params)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr)

    forget_batches = _batches(tokenizer, forget, cfg, cfg.seed)
    retain_batches = _batches(tokenizer, retain, cfg, cfg.seed + 1)
    d = hidden_size_of(frozen.config)
    device = next(frozen.parameters()).device
    u = random_direction(d, cfg.seed).to(device)
    with torch.no_grad():
        h0 = _forward(frozen, forget_batches[0], layer).float()
        m0 = forget_batches[0]["attention_mask"].to(device).bool()
        median_norm = float(h0[m0].norm(dim=-1).median())
    c = cfg.steering_coef or cfg.steering_scale * median_norm
    target = (c * u).to(next(frozen.parameters()).dtype)

    ckpt, start, bar = resumed_steps(
        checkpoint, params, opt, CHECKPOINT_FORMAT, steps=cfg.steps, desc="rmu", progress=progress, accept_untagged=True
    )
    history: list[dict[str, float]] = []
    for step in bar:
        fb, rb = forget_batches[step], retain_batches[step]
        h_forget = _forward(updated, fb, layer)
        forget_loss = _masked_mse(h_forget, target, fb["attention_mask"].to(device))
        with torch.no_grad():
            h_retain_frozen = _forward(frozen, rb, layer)
        h_retain = _forward(updated, rb, layer)
        retain_loss = _masked_mse(h_retain, h_retain_frozen, rb["attention_mask"].to(device))
        loss = forget_loss + cfg.alpha * retain_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(
            {"step": step, "forget_loss": float(forget_loss.detach()), "retain_loss": float(retain_loss.detach())}
        )
        bar.set_postfix(forget=f"{history[-1]['forget_loss']:.3g}", retain=f"{history[-1]['retain_loss']:.3g}")
        if ckpt is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_training_state(ckpt, step + 1, params, opt, CHECKPOINT_FORMAT)
    bar.close()
    updated.eval()
    for p in updated.parameters():
        p.requires_grad_(False)
    metrics: dict[str, Any] = {
        "config": {**asdict(cfg), "params": list(cfg.params)},
        "layer": layer,
        "steering_coef": c,
        "median_forget_norm": median_norm,
        "resumed_from_step": start,
        "first": history[0] if history else None,
        "last": history[-1] if history else None,
        "loss_curve": history[:: max(1, len(history) // 50)],
    }
    return RMUResult(updated, u.cpu(), float(c), sorted(params), metrics)


def save_rmu_delta(base: torch.nn.Module, result: RMUResult, path: str | Path) -> list[str]:
    """Write the unlearned model as a delta over ``base`` (only the changed tensors)."""
    names = save_delta(base, result.model, path)
    extra = set(names) - set(result.trained)
    if extra:
        raise RMUError(f"RMU changed tensors it should not have: {sorted(extra)[:3]}")
    return names

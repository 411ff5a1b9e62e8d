"""LoRA fine-tuning of a causal LM on a list of texts, offline, saved as a PEFT adapter.

The fine-tuning counterpart of ``rmu``: where RMU unlearns a domain, this teaches one,
so a study can compare a base model with a domain fine-tune given the way fine-tunes
are usually shared — a small adapter folder over an unchanged base
(``models.ft.source: adapter``).

What is trained: a low-rank update ``W + (α/r)·B·A`` on the named linear layers, with
``A`` random and ``B = 0`` at the start (so step 0 is exactly the base model); the base
weights stay frozen. The loss is plain next-token cross-entropy over the texts,
averaged over every real (non-padding) target token of a batch. Each text is cut into
pieces of at most ``max_tokens`` tokens, so a long document is learnt whole rather than
truncated.

Why these defaults (checked on SmolLM2-135M on 2 shared CPU cores: about 20 s a step
at batch 4 × ≤ 128 tokens, the forward and backward through all 30 layers; 12 steps
halved the loss on held-out text of a small synthetic domain, 3.13 → 1.58, and moved
unrelated text 4.38 → 4.06):

- **Targets: the MLP projections** (``gate_proj``, ``up_proj``, ``down_proj``) of every
  layer. What MNEME reads is the residual stream at one layer, token by token; the MLPs
  are the per-token writers into it, and a domain fine-tune mostly changes what is
  written on the domain's tokens. Adapting only the attention queries and values (the
  other common choice) changes which earlier tokens are mixed in, which moves the
  stream less per step and less locally. Training cost hardly depends on the choice:
  on a CPU it is the forward and backward pass through the frozen model, not the few
  adapter parameters (about 1.5M at r = 8 for SmolLM2-135M, 1% of the model).
- **r = 8, α = 16** (scale α/r = 2): enough capacity for a domain of a few thousand
  sentences; the α/r ratio, not r alone, sets the size of an update, so α = 2r keeps
  the step size comparable if r is changed.
- **lr = 1e-3**, AdamW, linear warm-up then linear decay to zero, 100 steps of 4 text
  pieces of ≤ 128 tokens: a 135M model moves clearly within a few dozen steps at this
  rate (the usual 1e-4 – 2e-4 is for billion-parameter models over far longer runs);
  100 steps is about half an hour on 2 CPU cores, a minute on a GPU.
- **No dropout**: short runs on a domain corpus are not where it pays, and without it
  a run is a pure function of its inputs, which keeps resume exact (the RNG state is
  still checkpointed, so a run with dropout resumes exactly too).
- **Every layer**: ``layers`` can restrict the adapter to some layers. A change in a
  layer after the one MNEME collects at is invisible there, so a study that must see
  the whole fine-tune can restrict it to ``layers <= L``; a realistic fine-tune does
  not, and the default is the realistic one.

Long runs checkpoint the adapter tensors, the optimiser state and the RNG state every
``checkpoint_every`` steps (safetensors, written atomically), and a restarted run with
the same checkpoint path resumes there. ``save_lora_adapter`` writes the adapter with
``safe_serialization=True`` into a temporary folder beside the destination and renames
it into place, so a killed save never leaves a half folder that looks usable.
``loss_report`` measures the effect: mean next-token loss on any named text sets,
before and after.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mneme_core.collect.models import ADAPTER_WEIGHTS, check_adapter, decoder_layers
from mneme_core.interventions.checkpoint import resumed_steps, save_training_state

CHECKPOINT_FORMAT = "mneme-lora-checkpoint-1"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class LoRAError(ValueError):
    """Bad LoRA settings or inputs; the message says what to change."""


@dataclass(frozen=True)
class LoRAConfig:
    r: int = 8  # rank of the update B·A
    alpha: int = 16  # the update is scaled by alpha / r (PEFT takes an integer)
    dropout: float = 0.0  # dropout on the adapter's input (0 = off; see the module docstring)
    target_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")  # linear layer names (Llama's)
    layers: tuple[int, ...] = ()  # decoder layers to adapt; () = every layer
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10  # linear warm-up, then linear decay to 0 at ``steps``
    steps: int = 100
    batch_size: int = 4  # text pieces per step
    max_tokens: int = 128  # each text is cut into pieces of at most this many tokens
    grad_clip: float = 1.0  # max gradient norm (0 = no clipping)
    seed: int = 0
    checkpoint_every: int = 25  # ~8 minutes of CPU training between checkpoints

    def validate(self) -> None:
        for name in ("r", "steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise LoRAError(f"lora.{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_tokens < 2:
            raise LoRAError(f"lora.max_tokens must be >= 2 (a next-token loss needs two tokens), got {self.max_tokens}")
        if self.alpha <= 0 or self.lr <= 0:
            raise LoRAError(f"lora: need alpha > 0 and lr > 0, got alpha={self.alpha!r}, lr={self.lr!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoRAError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise LoRAError("lora: weight_decay, grad_clip and warmup_steps must be >= 0")
        if not self.target_modules:
            raise LoRAError("lora.target_modules is empty: name the linear layers to adapt, e.g. ['down_proj']")
        if any(i < 0 for i in self.layers):
            raise LoRAError(f"lora.layers must be 0-based layer indices, got {list(self.layers)}")


@dataclass
class LoRAResult:
    model: torch.nn.Module  # the PEFT model (base weights frozen, adapter trained), eval mode
    trained: list[str]  # names of the adapter parameters that were trained
    metrics: dict[str, Any]


# --------------------------------------------------------------------------- the adapter


def check_targets(model: torch.nn.Module, cfg: LoRAConfig) -> list[str]:
    """Names of the linear layers ``cfg`` would adapt; LoRAError before any work if a
    target or a layer does not exist in ``model``."""
    blocks = decoder_layers(model)
    n_layers = len(blocks)
    bad = [i for i in cfg.layers if i >= n_layers]
    if bad:
        raise LoRAError(f"lora.layers {bad} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    wanted = set(cfg.layers) if cfg.layers else set(range(n_layers))
    found: list[str] = []
    seen: set[str] = set()
    for i, block in enumerate(blocks):
        if i not in wanted:
            continue
        for name, module in block.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in cfg.target_modules and isinstance(module, torch.nn.Linear):
                found.append(f"layer {i}: {name}")
                seen.add(leaf)
    missing = [t for t in cfg.target_modules if t not in seen]
    if missing:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in blocks[0].named_modules() if isinstance(m, torch.nn.Linear)})
        raise LoRAError(
            f"lora.target_modules {missing} are not linear layers of this model's decoder layers; it has {names}"
        )
    return found


def make_lora(model: torch.nn.Module, cfg: LoRAConfig = LoRAConfig()) -> torch.nn.Module:
    """``model`` wrapped in an untrained LoRA adapter (``B = 0``: the same function as
    ``model``). PEFT injects the adapter *into* ``model``; pass a copy to keep it."""
    from peft import LoraConfig, get_peft_model

    cfg.validate()
    check_targets(model, cfg)
    peft_cfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=list(cfg.layers) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def adapter_parameters(peft_model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The trainable adapter tensors of a PEFT model, by name."""
    return {n: p for n, p in peft_model.named_parameters() if "lora_" in n and p.requires_grad}


# --------------------------------------------------------------------------- data


def text_pieces(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Token ids of every text, cut into consecutive pieces of at most ``max_tokens``.

    Pieces of a single token are dropped (no next token to predict)."""
    pieces: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        for s in range(0, len(ids), max_tokens):
            piece = ids[s : s + max_tokens]
            if len(piece) >= 2:
                pieces.append(piece)
    return pieces


def _pad(pieces: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``ids_BT`` and ``mask_BT`` (1 = real token)."""
    T = max(len(p) for p in pieces)
    ids_BT = torch.full((len(pieces), T), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(pieces), T), dtype=torch.long)
    for b, p in enumerate(pieces):
        ids_BT[b, : len(p)] = torch.tensor(p)
        mask_BT[b, : len(p)] = 1
    return ids_BT, mask_BT


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad) if pad is not None else 0


def _step_order(n_pieces: int, cfg: LoRAConfig) -> list[list[int]]:
    """Piece indices per step: epochs of a fresh seeded shuffle each, cut into batches.

    A function of (n_pieces, cfg) only, so a resumed run sees the same batches."""
    need = cfg.steps * cfg.batch_size
    order: list[int] = []
    epoch = 0
    while len(order) < need:
        perm = list(range(n_pieces))
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(perm)
        order += perm
        epoch += 1
    return [order[s : s + cfg.batch_size] for s in range(0, need, cfg.batch_size)]


def next_token_loss(
    model: torch.nn.Module, ids_BT: torch.Tensor, mask_BT: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of predicting token t+1 from tokens ≤ t, over real target tokens only.

    A target counts when it and the token before it are real (right padding, so that is
    every target inside a piece). ``reduction="sum"`` returns the sum (for token-weighted
    means over many batches)."""
    device = next(model.parameters()).device
    ids_BT, mask_BT = ids_BT.to(device), mask_BT.to(device)
    logits_BTV = model(input_ids=ids_BT, attention_mask=mask_BT, use_cache=False).logits
    pred_BTV = logits_BTV[:, :-1].float()
    target_BT = ids_BT[:, 1:].masked_fill((mask_BT[:, 1:] * mask_BT[:, :-1]) == 0, -100)
    return F.cross_entropy(
        pred_BTV.reshape(-1, pred_BTV.shape[-1]), target_BT.reshape(-1), ignore_index=-100, reduction=reduction
    )


def _lr_at(step: int, cfg: LoRAConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then linear decay to 0 at ``steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * max(0.0, 1.0 - (step - cfg.warmup_steps) / span)


# --------------------------------------------------------------------------- checkpoints


# --------------------------------------------------------------------------- training


def lora_finetune(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    cfg: LoRAConfig = LoRAConfig(),
    *,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> LoRAResult:
    """Fine-tune a LoRA adapter on ``texts`` over a copy of ``model`` (left untouched).

    ``checkpoint``: a safetensors file for the adapter + optimiser + RNG state, written
    every ``cfg.checkpoint_every`` steps and read on start, so a killed run resumes.
    """
    cfg.validate()
    if not texts or not any(t.strip() for t in texts):
        raise LoRAError("LoRA fine-tuning needs non-empty texts")
    check_targets(model, cfg)
    pieces = text_pieces(tokenizer, texts, cfg.max_tokens)
    if not pieces:
        raise LoRAError(f"none of the {len(texts)} texts has two tokens or more; nothing to learn from")

    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
        torch.manual_seed(cfg.seed)  # A's random init, and dropout's stream
        return _train(model, tokenizer, texts, pieces, cfg, checkpoint, progress)


def _train(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    pieces: list[list[int]],
    cfg: LoRAConfig,
    checkpoint: str | Path | None,
    progress: bool,
) -> LoRAResult:
    peft_model = make_lora(copy.deepcopy(model), cfg)
    params = adapter_parameters(peft_model)
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = _step_order(len(pieces), cfg)
    pad_id = _pad_id(tokenizer)

    ckpt, start, bar = resumed_steps(
        checkpoint, params, opt, CHECKPOINT_FORMAT, steps=cfg.steps, desc="lora", progress=progress
    )
    peft_model.train()
    history: list[dict[str, float]] = []
    n_target_tokens = 0
    started = time.perf_counter()
    for step in bar:
        ids_BT, mask_BT = _pad([pieces[i] for i in schedule[step]], pad_id)
        lr = _lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = next_token_loss(peft_model, ids_BT, mask_BT)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
        opt.step()
        n_target_tokens += int((mask_BT[:, 1:] * mask_BT[:, :-1]).sum())
        history.append({"step": step, "loss": float(loss.detach()), "lr": lr})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", lr=f"{lr:.2g}")
        if ckpt is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_training_state(ckpt, step + 1, params, opt, CHECKPOINT_FORMAT)
    bar.close()
    peft_model.eval()
    for p in peft_model.parameters():
        p.requires_grad_(False)
    n_total = sum(p.numel() for p in peft_model.parameters())
    metrics: dict[str, Any] = {
        "config": {**asdict(cfg), "target_modules": list(cfg.target_modules), "layers": list(cfg.layers)},
        "n_texts": len(texts),
        "n_pieces": len(pieces),
        "resumed_from_step": start,
        "target_tokens_seen": n_target_tokens,
        "seconds": round(time.perf_counter() - started, 3),
        "n_adapter_params": int(sum(p.numel() for p in params.values())),
        "n_params": int(n_total),
        "first": history[0] if history else None,
        "last": history[-1] if history else None,
        "loss_curve": history[:: max(1, len(history) // 50)],
    }
    return LoRAResult(peft_model, sorted(params), metrics)


# --------------------------------------------------------------------------- saving


def save_lora_adapter(model: LoRAResult | torch.nn.Module, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the adapter as a PEFT folder MNEME loads with ``models.ft.source: adapter``.

    ``adapter_config.json`` + ``adapter_model.safetensors`` (never a pickle), written to a
    temporary folder beside ``path`` and renamed into place; an existing ``path`` is only
    replaced with ``overwrite=True``. The result is checked with ``models.check_adapter``.
    """
    # Any: PEFT's save_pretrained is not on torch's Module type
    peft_model: Any = model.model if isinstance(model, LoRAResult) else model
    if not hasattr(peft_model, "peft_config"):
        raise LoRAError("save_lora_adapter needs a PEFT model (from lora_finetune or make_lora)")
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise LoRAError(f"{dest} exists; pass overwrite=True to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    old: Path | None = None
    try:
        tmp.chmod(0o755)
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        pickled = [p.name for p in tmp.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickled or not (tmp / ADAPTER_WEIGHTS).is_file():
            raise LoRAError(f"PEFT wrote {pickled or 'no safetensors weights'}; expected only {ADAPTER_WEIGHTS}")
        check_adapter(tmp)
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
            os.replace(dest, old / dest.name)
        try:
            os.replace(tmp, dest)
        except OSError:
            if old is not None:  # put the previous adapter back before giving up
                os.replace(old / dest.name, dest)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    check_adapter(dest)
    return dest


# --------------------------------------------------------------------------- effect


@torch.no_grad()
def mean_loss(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], max_tokens: int = 128, batch_size: int = 8
) -> float:
    """Mean next-token cross-entropy over every target token of ``texts`` (token-weighted,
    the texts cut into pieces as in training)."""
    pieces = text_pieces(tokenizer, texts, max_tokens)
    if not pieces:
        raise LoRAError("mean_loss needs texts of two tokens or more")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    pad_id = _pad_id(tokenizer)
    try:
        for s in range(0, len(pieces), batch_size):
            ids_BT, mask_BT = _pad(pieces[s : s + batch_size], pad_id)
            total += float(next_token_loss(model, ids_BT, mask_BT, reduction="sum"))
            count += int((mask_BT[:, 1:] * mask_BT[:, :-1]).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


def loss_report(
    before: torch.nn.Module,
    after: torch.nn.Module,
    tokenizer: Any,
    text_sets: Mapping[str, Sequence[str]],
    max_tokens: int = 128,
) -> dict[str, dict[str, float]]:
    """What a fine-tune did to next-token loss, per named text set.

    ``{name: {"before", "after", "change"}}`` with ``change = after − before`` (negative:
    the fine-tuned model predicts that text better). A domain fine-tune should lower its
    domain's loss much more than other text's; held-out domain text tells learning from
    memorising, and unrelated text shows the side effects a study then looks for.
    """
    out: dict[str, dict[str, float]] = {}
    for name, texts in text_sets.items():
        b = mean_loss(before, tokenizer, texts, max_tokens)
        a = mean_loss(after, tokenizer, texts, max_tokens)
        out[name] = {"before": b, "after": a, "change": a - b}
    return out

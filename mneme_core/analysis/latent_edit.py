"""One forward hook at layer L that adds chosen latents' contributions to the residual stream.

Causal confirmation (``mneme_core.evaluation.confirmation``) asks whether the latents behind a
prediction cause the side effect by editing the residual stream at the study's layer L
(the output of decoder layer L, as everywhere in MNEME: ``models.py``) and re-scoring the
benchmark questions. On every edited token the hook does::

    x_L ← x_L + Σ_{j∈S} f_j · r_j

where ``f`` is the cross-coder's code of the token's *paired* clean activations
``[x_base; x_ft]`` and ``r_j`` a raw-space vector per latent (ablation: ``−d_base,j / s``,
restore: the base's contribution minus the fine-tuned one's; ``confirmation`` builds them).

**What the encoder reads.** The encoder needs both halves of the pair, and the hooked model
has only its own. Any stand-in for the other half changes ``f``: zeros halve a shared
latent's pre-activation, a copy of the hooked model's half gives a suppressed latent the
base's strength in both. So the hook replays the same forward (same token ids, attention
mask and position ids) through the *partner* model up to layer L — one truncated forward;
the partner's later layers and LM head never run — and encodes the true pair. Both halves
are clean: the edit is applied at L, so nothing before L, in either model, sees it. Cost:
a forward of ``(L + 1) / n_layers`` of the partner per batch.

**Which tokens.** As in the activation store (``activations.massive_token_mask``),
positions below ``skip_first`` and tokens whose base-model norm exceeds
``massive_multiple`` × the batch median are left alone: the cross-coder never saw such
tokens (attention sinks), so its code there means nothing. The MC runner gives padding
position id 0, so padding falls under ``skip_first`` too (and no real token attends to it).

The code uses the cross-coder's calibrated threshold, so it is per token; a cross-coder
imported without one falls back to BatchTopK over the edited tokens of each batch, which
makes the code depend on what else is in the batch.

With an empty latent set the hook returns the layer's output untouched, so the model's
outputs equal the unhooked model's exactly; only layer L's output is ever changed; the
hooks are removed when the ``intervene`` block ends, even on an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mneme_core.collect.models import decoder_layers, resolve_layer, truncated_forward


@dataclass(frozen=True)
class LatentEdit:
    """What the hook adds at layer L: ``Σ_{j∈latents} f_j · rows_Sd[j]`` on edited tokens.

    ``side`` says which half of the cross-coder's input the hooked model is (0 base,
    1 fine-tuned); the partner model fills the other half.
    """

    crosscoder: Any  # BatchTopKCrossCoder
    latents: tuple[int, ...]
    rows_Sd: torch.Tensor  # raw-space vector per unit of f_j, one row per latent of ``latents``
    side: int
    skip_first: int = 1
    massive_multiple: float = 0.0

    def __post_init__(self) -> None:
        if self.side not in (0, 1):
            raise ValueError(f"side must be 0 (base) or 1 (fine-tuned), got {self.side}")
        if tuple(self.rows_Sd.shape) != (len(self.latents), self.crosscoder.d_model):
            raise ValueError(
                f"rows_Sd must be ({len(self.latents)}, {self.crosscoder.d_model}), got {tuple(self.rows_Sd.shape)}"
            )


def edit_mask(
    positions_BT: torch.Tensor, base_norms_BT: torch.Tensor, skip_first: int, multiple: float
) -> torch.Tensor:
    """Tokens the cross-coder may edit: position ≥ ``skip_first`` and, with ``multiple > 0``,
    a base norm at most ``multiple`` × the median over those positions."""
    mask = positions_BT >= skip_first
    if multiple > 0 and bool(mask.any()):
        median = base_norms_BT[mask].median()
        mask = mask & (base_norms_BT <= multiple * median)
    return mask


def paired_codes(crosscoder: Any, base_Nd: torch.Tensor, ft_Nd: torch.Tensor) -> torch.Tensor:
    """The cross-coder's code ``f (N, F)`` of paired raw activations, with its inference threshold."""
    x_N2d = torch.stack([base_Nd, ft_Nd], dim=1).to(crosscoder.W_dec.dtype)
    return crosscoder.encode(x_N2d, use_threshold=True)


def edit_delta(
    edit: LatentEdit, own_BTd: torch.Tensor, partner_BTd: torch.Tensor, positions_BT: torch.Tensor
) -> torch.Tensor:
    """The vector the hook adds to each token's residual (zeros where nothing is edited)."""
    base, ft = (own_BTd, partner_BTd) if edit.side == 0 else (partner_BTd, own_BTd)
    mask = edit_mask(positions_BT, base.float().norm(dim=-1), edit.skip_first, edit.massive_multiple)
    delta = torch.zeros(own_BTd.shape, dtype=edit.rows_Sd.dtype, device=own_BTd.device)
    if not edit.latents or not bool(mask.any()):
        return delta
    f_NF = paired_codes(edit.crosscoder, base[mask].float(), ft[mask].float())
    index = torch.tensor(edit.latents, dtype=torch.long, device=f_NF.device)
    delta[mask] = f_NF[:, index].to(edit.rows_Sd.dtype) @ edit.rows_Sd.to(f_NF.device)
    return delta


def _positions(captured: dict[str, Any], shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Position ids of the hooked forward as (B, T); ``arange`` when the caller gave none."""
    pos = captured.get("position_ids")
    if pos is None:
        pos = torch.arange(shape[1], device=device)[None]
    return pos.expand(shape[0], shape[1])


@contextlib.contextmanager
def intervene(model: torch.nn.Module, layer: int, edit: LatentEdit, partner: torch.nn.Module | None) -> Iterator[None]:
    """Within the block, every forward of ``model`` gets ``edit`` at the output of ``layer``.

    ``partner`` is the other model of the pair (its clean layer-L activations fill the
    encoder's other half); ``None`` — or ``model`` itself — uses the hooked model's own
    activation for both halves (a model compared with itself, as in a null control).
    """
    layers = decoder_layers(model)
    layer = resolve_layer(layer, len(layers))
    body = getattr(model, "base_model", model)
    partner = None if partner is model else partner
    captured: dict[str, Any] = {}

    def capture(_module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        captured.clear()
        captured["input_ids"] = kwargs.get("input_ids", args[0] if args else None)
        captured["attention_mask"] = kwargs.get("attention_mask")
        captured["position_ids"] = kwargs.get("position_ids")

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if not edit.latents:
            return None
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        with torch.no_grad():
            other = hidden if partner is None else _partner_stream(partner, captured, layer)
            delta = edit_delta(edit, hidden, other, _positions(captured, hidden.shape[:2], hidden.device))
        edited = hidden + delta.to(hidden.dtype)
        return (edited, *output[1:]) if isinstance(output, (tuple, list)) else edited

    handles = [body.register_forward_pre_hook(capture, with_kwargs=True), layers[layer].register_forward_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _partner_stream(partner: torch.nn.Module, captured: dict[str, Any], layer: int) -> torch.Tensor:
    """The partner's clean layer-L residual on the forward the hooked model is running."""
    if captured.get("input_ids") is None:
        raise ValueError(
            "a latent edit replays the forward in the partner model and needs input_ids (not inputs_embeds)"
        )
    kwargs = {"position_ids": captured["position_ids"]} if captured.get("position_ids") is not None else {}
    return truncated_forward(partner, captured["input_ids"], captured["attention_mask"], layer, **kwargs)


@torch.no_grad()
def code_mass(
    crosscoder: Any,
    base: torch.nn.Module,
    ft: torch.nn.Module,
    layer: int,
    sequences: Sequence[Sequence[int]],
    *,
    skip_first: int = 1,
    massive_multiple: float = 0.0,
    batch_size: int = 8,
    pad_id: int = 0,
) -> torch.Tensor:
    """``Σ_t f_tj`` (F,) over the tokens the hook would edit, on token-id ``sequences``.

    Why: a random control set is matched to the target set in *activation mass* (how much
    the intervention would move), and that is ``Σ_t f_tj ‖r_j‖`` over the same tokens.
    Sequences are left-padded; position ids count real tokens only, as in the MC runner.
    """
    total = torch.zeros(crosscoder.n_latents, dtype=torch.float64)
    device = next(base.parameters()).device
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        T = max(len(s) for s in batch)
        ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
        attn = torch.zeros((len(batch), T), dtype=torch.long)
        for b, seq in enumerate(batch):
            ids[b, T - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            attn[b, T - len(seq) :] = 1
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        ids, attn, pos = ids.to(device), attn.to(device), pos.to(device)
        x_b = truncated_forward(base, ids, attn, layer, position_ids=pos).float()
        x_f = truncated_forward(ft, ids, attn, layer, position_ids=pos).float()
        mask = edit_mask(torch.where(attn.bool(), pos, -1), x_b.norm(dim=-1), skip_first, massive_multiple)
        if bool(mask.any()):
            total += paired_codes(crosscoder, x_b[mask], x_f[mask]).double().sum(0).cpu()
    return total

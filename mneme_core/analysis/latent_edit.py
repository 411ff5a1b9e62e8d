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

**Replaying the clean prefix** (``PrefixCache``). Confirmation scores the same questions
with many latent sets (the target and its controls, ablation and restore), and everything
up to layer L is clean in both models, so it is the same every time. Given a cache, the
hooked forward computes both models' layer-L streams once per batch (keyed by its token
ids, mask and positions), and on every later forward of that batch layers 0..L of the
hooked model are swapped for stand-ins that hand the cached stream (plus the edit) to layer
L + 1: only the layers after L and the LM head run, and the partner does not run at all.
The result is the uncached forward's, up to float rounding of the same operations
(``tests/test_latent_edit.py`` checks it). Whether an architecture allows the swap (its
layers return a plain tensor and later layers read nothing the earlier ones left behind)
is checked once per model on a short input against the plain forward; where it does not,
the cache is not used and the edit runs as above.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mneme_core.collect.models import decoder_layers, layer_output, model_body, resolve_layer, truncated_forward


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


class PrefixCache:
    """Both models' clean layer-L streams per forward batch (module docstring), the most
    recent ``max_bytes`` kept; one cache serves every edit of one pair at one layer."""

    def __init__(self, base: torch.nn.Module, ft: torch.nn.Module, layer: int, max_bytes: int = 2 << 30):
        self.models = (base, ft)
        self.layer = resolve_layer(layer, len(decoder_layers(base)))
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._swap_ok: dict[int, bool] = {}
        self.hits = 0
        self.misses = 0

    def side_of(self, model: torch.nn.Module) -> int:
        for side, m in enumerate(self.models):
            if m is model:
                return side
        raise ValueError("this prefix cache belongs to another model pair")

    def streams(self, captured: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(base, fine-tuned) clean layer-L stream of the captured forward, computed on first sight."""
        key = _batch_key(captured)
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return hit
        self.misses += 1
        base, ft = self.models
        with torch.no_grad():
            base_L = _replay_stream(base, captured, self.layer)
            ft_L = base_L if ft is base else _replay_stream(ft, captured, self.layer)
        self._entries[key] = (base_L, ft_L)
        self._bytes += _nbytes(base_L, ft_L)
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            self._bytes -= _nbytes(*self._entries.popitem(last=False)[1])
        return base_L, ft_L

    def can_swap(self, model: torch.nn.Module) -> bool:
        """Does replaying layer L's output reproduce ``model``'s plain logits? Checked once."""
        if id(model) not in self._swap_ok:
            self._swap_ok[id(model)] = _swap_reproduces(model, self.layer)
        return self._swap_ok[id(model)]


def _nbytes(*tensors: torch.Tensor) -> int:
    distinct = {id(t): t for t in tensors}.values()
    return sum(t.numel() * t.element_size() for t in distinct)


def _batch_key(captured: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in ("input_ids", "attention_mask", "position_ids"):
        t = captured.get(name)
        h.update(name.encode())
        if t is not None:
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())  # any dtype, bf16 too
    return h.hexdigest()


class _Passthrough(torch.nn.Module):
    """Stands in for a decoder layer below L while a cached stream is replayed."""

    def __init__(self, original: torch.nn.Module):
        super().__init__()
        for attr in ("attention_type", "layer_idx"):  # some model bodies read these off each layer
            if hasattr(original, attr):
                setattr(self, attr, getattr(original, attr))

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class _Replay(_Passthrough):
    """Stands in for layer L: its output is the given stream."""

    def __init__(self, original: torch.nn.Module, stream: torch.Tensor):
        super().__init__(original)
        self.stream = stream

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.stream.to(hidden_states.dtype)


class _LayerSwap:
    """Puts stand-ins for layers 0..L of a model in place, and the real layers back."""

    def __init__(self, model: torch.nn.Module, layer: int):
        self.layers = decoder_layers(model)
        self.originals = [self.layers[i] for i in range(layer + 1)]

    def install(self, stream: torch.Tensor) -> None:
        last = len(self.originals) - 1
        for i, original in enumerate(self.originals):
            self.layers[i] = _Replay(original, stream) if i == last else _Passthrough(original)

    def restore(self) -> None:
        for i, original in enumerate(self.originals):
            self.layers[i] = original


def _swap_reproduces(model: torch.nn.Module, layer: int) -> bool:
    """Two rows of different lengths, left-padded, with a mask and position ids (as the MC
    runner sends them): the replayed forward must give the plain forward's logits."""
    vocab = int(getattr(model.config, "vocab_size", 0) or 2)
    device = next(model.parameters()).device
    ids = (torch.arange(24).reshape(2, 12) * 7 + 3) % vocab
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
    kwargs: dict[str, Any] = {"attention_mask": mask, "position_ids": pos, "use_cache": False}
    swap = _LayerSwap(model, layer)
    try:
        with torch.no_grad():
            plain = model(input_ids=ids, **kwargs).logits
            stream = truncated_forward(model, ids, mask, layer, position_ids=pos)
            swap.install(stream)
            replayed = model(input_ids=ids, **kwargs).logits
        keep = mask.bool()
        ok = bool(torch.allclose(plain[keep].float(), replayed[keep].float(), atol=1e-4, rtol=1e-4))
    except Exception:  # noqa: BLE001 - any failure means: run the layers as usual
        ok = False
    finally:
        swap.restore()
    if not ok:
        warnings.warn(
            f"{type(model).__name__} cannot replay its layer-{layer} stream; latent edits run every layer",
            stacklevel=3,
        )
    return ok


@contextlib.contextmanager
def intervene(
    model: torch.nn.Module,
    layer: int,
    edit: LatentEdit,
    partner: torch.nn.Module | None,
    prefix: PrefixCache | None = None,
) -> Iterator[None]:
    """Within the block, every forward of ``model`` gets ``edit`` at the output of ``layer``.

    ``partner`` is the other model of the pair (its clean layer-L activations fill the
    encoder's other half); ``None`` — or ``model`` itself — uses the hooked model's own
    activation for both halves (a model compared with itself, as in a null control).
    ``prefix``, a cache over this pair at this layer, replays the clean layers 0..L instead
    of running them (module docstring).
    """
    layers = decoder_layers(model)
    layer = resolve_layer(layer, len(layers))
    body = model_body(model)
    partner = None if partner is model else partner
    captured: dict[str, Any] = {}

    def capture(args: tuple, kwargs: dict[str, Any]) -> None:
        captured.clear()
        captured["input_ids"] = kwargs.get("input_ids", args[0] if args else None)
        captured["attention_mask"] = kwargs.get("attention_mask")
        captured["position_ids"] = kwargs.get("position_ids")

    def edited(hidden: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            delta = edit_delta(edit, hidden, other, _positions(captured, hidden.shape[:2], hidden.device))
        return hidden + delta.to(hidden.dtype)

    if edit.latents and prefix is not None and prefix.layer == layer and prefix.can_swap(model):
        side, swap, busy = prefix.side_of(model), _LayerSwap(model, layer), [False]
        if partner is not None and partner is not prefix.models[1 - side]:
            raise ValueError("the partner is not the other model of this prefix cache's pair")

        def replay(_module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            if busy[0]:  # the cache's own truncated forward of this model: run it plainly
                return
            swap.restore()  # real layers for the cache's forward, even after a failed forward
            capture(args, kwargs)
            busy[0] = True
            try:
                streams = prefix.streams(captured)
            finally:
                busy[0] = False
            own = streams[side]
            swap.install(edited(own, own if partner is None else streams[1 - side]))

        def put_back(*_args: Any) -> None:
            if not busy[0]:
                swap.restore()

        handles = [
            body.register_forward_pre_hook(replay, with_kwargs=True),
            body.register_forward_hook(put_back, with_kwargs=True, always_call=True),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            swap.restore()
        return

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if not edit.latents:
            return None
        hidden = layer_output(output)
        with torch.no_grad():
            other = hidden if partner is None else _replay_stream(partner, captured, layer)
        out = edited(hidden, other)
        return (out, *output[1:]) if isinstance(output, (tuple, list)) else out

    handles = [
        body.register_forward_pre_hook(lambda _m, args, kwargs: capture(args, kwargs), with_kwargs=True),
        layers[layer].register_forward_hook(hook),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _replay_stream(model: torch.nn.Module, captured: dict[str, Any], layer: int) -> torch.Tensor:
    """``model``'s clean layer-L residual on the forward being run (the same ids, mask, positions)."""
    if captured.get("input_ids") is None:
        raise ValueError(
            "a latent edit replays the forward in the partner model and needs input_ids (not inputs_embeds)"
        )
    kwargs = {"position_ids": captured["position_ids"]} if captured.get("position_ids") is not None else {}
    return truncated_forward(model, captured["input_ids"], captured["attention_mask"], layer, **kwargs)


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

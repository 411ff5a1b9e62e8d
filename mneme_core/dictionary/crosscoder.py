"""The BatchTopK cross-coder (docs/DIFFING.md): one sparse code for two models' activations.

Shapes: batch ``B``, models ``M = 2`` (0 base, 1 fine-tuned), width ``d``, latents ``F``.

* Encoder ``W_enc (2, d, F)``, one bias ``b_enc (F)``: ``pre = Σ_m x_m W_enc[m] + b_enc``.
* Decoder ``W_dec (2, F, d)``, ``b_dec (2, d)``: ``x̂_m = f W_dec[m] + b_dec[m]``.
* Selection weight ``w_j = ‖W_dec[0, j]‖ + ‖W_dec[1, j]‖`` (``selection_norm="l2"``, the
  default) or ``‖W_dec[0, j]‖² + ‖W_dec[1, j]‖²`` (``"l2_squared"``, the paper's formula).
  We default to plain norms because they scale linearly with the decoder, like the
  activation they weigh, so a latent's score ``f_j w_j`` is its contribution to ``‖x̂‖``
  (up to the angle between rows); squared norms over-reward large rows. Both are tested.
* Training keeps the top ``k·B`` scores ``f·w`` of the whole batch (the kept values are
  the unscaled ``f``); inference keeps ``f_j`` where ``f_j w_j > θ``, θ calibrated after
  training on held-out tokens so the mean L0 there is k (``calibrate_threshold``;
  ``threshold`` buffer; negative = not calibrated yet, then ``encode`` falls back to
  BatchTopK over the batch it is given).
* Decoder norms stay free: they carry the diffing signal.

Normalisation: one scalar for both models, ``norm_scale = sqrt(d / E‖x‖²)`` over the two
models' tokens pooled (the buffer keeps one entry per model, equal). A scalar (not a
per-dimension mean/std) keeps each model's geometry intact — directions and the relative
size of features inside a model are what the decoder must learn — and *one* scalar keeps
the size difference between the models: a fine-tune that grows the residual stream is a
change the diff must see, not one to normalise away. The mean is left to ``b_dec``. The
scale lives in a buffer, is saved with the weights, and every public method takes and
returns *raw* activations; ``normalize`` / ``denormalize`` expose the mapping for analyses
(latent scaling) that work in the decoder's own space.

Training speed (CPU): with BatchTopK only ``k`` latents per token are active, so
``training_loss(..., sparse=True)`` runs one custom autograd function: the dense encoder
matmul, a fused selection (a sampled bar leaves a few candidates; only those are ranked),
a decode with ``embedding_bag`` over the kept (token, latent) pairs, and a backward that
touches only those pairs (a sampled dense-dense product for ``∂f``, ``embedding_bag``s
over the pairs grouped by latent for ``∂W_dec`` and ``∂W_enc``). A step costs the encoder
matmul plus ``O(B·k·d)``. The aux-k loss runs densely over the dead latents' columns only.
``sparse=False`` is the plain dense-autograd path: the reference the sparse path is
tested against (same pairs, same gradients in float64) and the bench's baseline.
bf16 (``compute_dtype``) applies to the encoder matmul only; on CPUs without native bf16
it is far slower than fp32 (the bench measures it), on GPUs it pays.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as Fn
from torch import nn

from mneme_core.common.atomic import atomic_path, atomic_write_json
from mneme_core.common.hub import REPO_ID, Hub

FORMAT = "mneme-batchtopk-crosscoder"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "norm_scale")


class CrossCoderFileError(RuntimeError):
    """A saved cross-coder folder is missing, damaged or incompatible."""


# --------------------------------------------------------------------------- selection


def batch_topk_indices(score: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Ascending flat indices of the ``n_keep`` largest *positive* entries of ``score``.

    Exact (the set ``torch.topk`` would pick; ties at the cut go to the lowest index), but
    cheaper on CPU than a ``topk`` of ``k·B`` winners over ``B·F`` entries: a bar from a
    strided sample leaves a few candidates, and only those are ranked.
    """
    flat = score.reshape(-1)
    bar = _sample_bar(flat, n_keep, flat.numel())
    cand = (flat > bar).nonzero().squeeze(1)
    if cand.numel() < n_keep and bar > 0.0:
        cand = (flat > 0).nonzero().squeeze(1)
    return cand[_top_of(flat[cand], n_keep)]


def _sample_bar(sample: torch.Tensor, n_keep: int, n_total: int) -> float:
    """A bar that about twice ``n_keep`` of ``n_total`` scores pass, from a sample of them.

    Generous on purpose: a bar set too high costs a second pass; one too low only a
    slightly larger candidate list.
    """
    want = 2.0 * n_keep / n_total
    stride = max(1, sample.numel() // 65_536)
    sample = sample.reshape(-1)[::stride]
    if want >= 1.0 or sample.numel() < 64:
        return 0.0
    rank = max(1, int(sample.numel() * (1.0 - want)))
    return max(0.0, float(sample.float().kthvalue(rank).values))


def _top_of(cand_scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Boolean mask of the ``n_keep`` largest positive candidates, order preserved.

    Everything above the ``n_keep``-th value, then the first ties at it, so the count is
    exact and the kept indices stay in their (ascending) order without a sort.
    """
    positive = cand_scores > 0
    if int(positive.sum()) <= n_keep:
        return positive
    kth = torch.topk(cand_scores, n_keep, sorted=False).values.min()
    above = cand_scores > kth
    ties = cand_scores == kth
    return above | (ties & (torch.cumsum(ties, 0) <= n_keep - int(above.sum())))


class _SparseCrossCoder(torch.autograd.Function):
    """Encoder → BatchTopK → decoder, with every gradient computed on the kept pairs only.

    Forward: ``pre = x W_encᵀ + b`` (the one dense matmul), keep the BatchTopK pairs
    ``(i, j, f_ij)``, decode ``x̂_i = Σ_j f_ij W_dec[j]`` with one ``embedding_bag``
    (no bias; the caller adds ``b_dec``). Backward, with ``G = ∂L/∂x̂``:
    ``∂f_ij = ⟨G_i, W_dec[j]⟩`` (a sampled dense-dense product over the kept pairs),
    ``∂W_dec[j] = Σ_i f_ij G_i`` and ``∂W_enc[j] = Σ_i ∂f_ij x_i`` (weighted sums of rows
    grouped by latent: ``embedding_bag`` over the pairs sorted by latent), and
    ``∂b_enc[j] = Σ_i ∂f_ij``. ReLU's derivative is 1 on every kept pair (all have
    ``f > 0``). Nothing of size ``B×F`` survives the forward.
    """

    @staticmethod
    def forward(ctx, x_BD, W_enc_DF, b_F, W_dec, w_F, n_keep: int, compute_dtype):
        B, F_ = x_BD.shape[0], W_enc_DF.shape[1]
        if compute_dtype == x_BD.dtype:
            pre_BF = torch.addmm(b_F, x_BD, W_enc_DF)
        else:
            pre_BF = torch.addmm(b_F.to(compute_dtype), x_BD.to(compute_dtype), W_enc_DF.to(compute_dtype)).to(
                x_BD.dtype
            )
        score = pre_BF.mul_(w_F).reshape(-1)  # in place: no second B×F buffer
        idx = batch_topk_indices(score, n_keep)  # ascending, so grouped by token
        kept = score[idx]
        rows, cols = idx // F_, idx % F_
        vals = kept / w_F[cols]  # the kept values are the unscaled f
        row_off = _offsets(rows, B)
        x_hat = torch.stack(
            [Fn.embedding_bag(cols, W_dec[m], row_off, mode="sum", per_sample_weights=vals) for m in range(2)], 1
        )
        by_col, order = torch.sort(cols, stable=True)
        ctx.save_for_backward(x_BD, W_dec, vals, rows, cols, row_off, order, _offsets(by_col, F_))
        ctx.mark_non_differentiable(cols)
        return x_hat, cols

    @staticmethod
    def backward(ctx, g_B2d, *_):
        x_BD, W_dec, vals, rows, cols, row_off, order, col_off = ctx.saved_tensors
        B, F_ = x_BD.shape[0], W_dec.shape[1]
        crow = torch.cat([row_off, row_off.new_tensor([cols.numel()])])
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(crow, cols, torch.ones_like(vals), (B, F_), check_invariants=False)
        rows_c, vals_c = rows[order], vals[order]
        g_vals = torch.zeros_like(vals)
        grad_W_dec = torch.empty_like(W_dec)
        for m in range(2):
            g_m = g_B2d[:, m].contiguous()
            g_vals += torch.sparse.sampled_addmm(pattern, g_m, W_dec[m].t(), beta=0.0).values()
            grad_W_dec[m] = Fn.embedding_bag(rows_c, g_m, col_off, mode="sum", per_sample_weights=vals_c)
        grad_W_enc = Fn.embedding_bag(rows_c, x_BD, col_off, mode="sum", per_sample_weights=g_vals[order]).t()
        grad_b = x_BD.new_zeros(F_).index_add_(0, cols, g_vals)
        return None, grad_W_enc.contiguous(), grad_b, grad_W_dec, None, None, None


def _offsets(sorted_ids: torch.Tensor, n: int) -> torch.Tensor:
    """Start of each id's run in a sorted id vector (embedding_bag / CSR offsets)."""
    counts = torch.bincount(sorted_ids, minlength=n)
    return torch.cumsum(counts, 0) - counts


@dataclass
class LossOutput:
    """One training step's loss and the statistics the trainer tracks."""

    loss: torch.Tensor  # recon + alpha * aux, differentiable
    recon: torch.Tensor  # Σ_m c_m ‖x_m − x̂_m‖² per token (c: model_weights or 1), token mean, normalised
    aux: torch.Tensor  # normalised aux-k loss (0 when no latent is dead)
    fired_F: torch.Tensor  # bool (F): latent kept for at least one token of this batch
    l0: float  # mean kept latents per token


# --------------------------------------------------------------------------- the module


class BatchTopKCrossCoder(nn.Module):
    """BatchTopK cross-coder over paired activations ``(N, 2, d)``; see the module doc."""

    # Buffers, declared so the type checker sees tensors (``register_buffer`` sets them).
    threshold: torch.Tensor
    norm_scale: torch.Tensor

    def __init__(
        self,
        d_model: int,
        n_latents: int,
        k: int,
        selection_norm: Literal["l2", "l2_squared"] = "l2",
        seed: int | None = 0,
    ):
        super().__init__()
        if d_model <= 0 or n_latents <= 0 or not 0 < k <= n_latents:
            raise ValueError(f"need d_model > 0, n_latents > 0 and 0 < k <= n_latents; got {d_model}, {n_latents}, {k}")
        if selection_norm not in ("l2", "l2_squared"):
            raise ValueError(f"selection_norm must be 'l2' or 'l2_squared', got {selection_norm!r}")
        self.d_model, self.n_latents, self.k, self.selection_norm = d_model, n_latents, k, selection_norm
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        # One kaiming-uniform draw (fan-in d) copied to both halves and scaled by 1/√2: on
        # paired inputs x_base ≈ x_ft the pre-activation has the size one independent
        # draw per half would give, and every latent starts *shared* (cosine 1, relative
        # norm 0.5), so any asymmetry is learned from the data, never left over from init.
        bound = 1.0 / math.sqrt(d_model)
        W_DF = (torch.rand(d_model, n_latents, generator=gen) * 2 - 1) * (bound / math.sqrt(2))
        W_enc = torch.stack([W_DF, W_DF.clone()])
        self.W_enc = nn.Parameter(W_enc)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        # Decoder = encoder transposed.
        self.W_dec = nn.Parameter(W_enc.transpose(1, 2).contiguous())
        self.b_dec = nn.Parameter(torch.zeros(2, d_model))
        self.register_buffer("threshold", torch.tensor(-1.0))
        self.register_buffer("norm_scale", torch.ones(2))

    # ----------------------------------------------------------------- views & stats

    @property
    def W_enc_DF(self) -> torch.Tensor:
        """The encoder as a (2d, F) matrix (a view): ``pre = [x_base, x_ft] @ W_enc_DF + b``."""
        return self.W_enc.view(2 * self.d_model, self.n_latents)

    def selection_weights(self) -> torch.Tensor:
        """w_j (F) from the current decoder, without gradient."""
        with torch.no_grad():
            if self.selection_norm == "l2":
                return self.W_dec.norm(dim=-1).sum(0)
            return self.W_dec.pow(2).sum(dim=-1).sum(0)

    def normalize(self, x_N2d: torch.Tensor) -> torch.Tensor:
        """Raw activations → the model's space (per-model scale so E‖x_m‖² = d)."""
        return x_N2d * self.norm_scale.to(x_N2d.dtype)[:, None]

    def denormalize(self, x_N2d: torch.Tensor) -> torch.Tensor:
        return x_N2d / self.norm_scale.to(x_N2d.dtype)[:, None]

    @torch.no_grad()
    def fit_normalization(self, sample_N2d: torch.Tensor) -> None:
        """Set ``norm_scale`` from raw activations: one factor for both models, so that
        E‖x‖² = d over the two models' tokens pooled.

        One shared factor, not one per model: a fine-tune that grows (or shrinks) the
        residual stream must show up as larger (smaller) fine-tuned decoder rows and β, not
        be divided away before the cross-coder sees it.
        """
        sq = sample_N2d.double().pow(2).sum(-1).mean(0)  # (2,)
        if not torch.all(torch.isfinite(sq)) or torch.any(sq <= 0):
            raise ValueError("cannot normalise: activations are all zero or not finite for a model")
        self.norm_scale.fill_(float(torch.sqrt(self.d_model / sq.mean())))

    @torch.no_grad()
    def model_weights_for(self, sample_N2d: torch.Tensor) -> torch.Tensor:
        """Loss weights (2,) that give both models' reconstruction errors the same say:
        ``c_m = v̄ / v_m`` with ``v_m`` model m's variance in the normalised space (sum over
        dimensions) on raw activations ``sample_N2d``, ``v̄`` their mean; (1, 1) for two
        models of equal variance.

        The shared scale keeps a fine-tune's change of size in the decoder norms, but left
        alone it also lets the larger model's errors dominate the loss: a fine-tune that
        doubles the variance of the stream (strong unlearning does) would buy itself the
        dictionary's capacity at the cost of the base's reconstruction. Weighting each
        model's error by its inverse variance makes the objective the sum of the two
        fractions of variance unexplained. Each decoder is still fit to its own model's
        target in the shared scale, so decoder norms and latent scaling read the same.
        """
        x_n = self.normalize(sample_N2d.double())
        var_2 = (x_n - x_n.mean(0)).pow(2).sum(-1).mean(0)
        if not torch.all(torch.isfinite(var_2)) or torch.any(var_2 <= 0):
            raise ValueError("cannot balance the models' losses: an activation sample has no variance")
        return (var_2.mean() / var_2).to(self.W_dec.dtype)

    @torch.no_grad()
    def init_decoder_bias(self, sample_N2d: torch.Tensor) -> None:
        """``b_dec`` = mean of a first batch (in the normalised space)."""
        self.b_dec.copy_(self.normalize(sample_N2d.to(self.b_dec.dtype)).mean(0))

    # ----------------------------------------------------------------- inference

    def _pre(self, x_n: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_enc, x_n.reshape(x_n.shape[0], -1), self.W_enc_DF)

    def encode(self, x_N2d: torch.Tensor, use_threshold: bool = True) -> torch.Tensor:
        """Sparse codes ``f (N, F)`` of raw activations.

        ``use_threshold=True`` keeps ``f_j`` where ``f_j w_j > θ`` (per token, what you
        want for analysis); ``False`` — or a threshold not estimated yet — keeps the top
        ``k·N`` scores of this batch (BatchTopK, as in training).
        """
        self._check_input(x_N2d)
        x_n = self.normalize(x_N2d.to(self.W_dec.dtype))
        f = torch.relu(self._pre(x_n))
        w = self.selection_weights()
        if use_threshold and float(self.threshold) >= 0:
            return f * (f * w > self.threshold)
        keep = torch.zeros(f.numel(), dtype=torch.bool, device=f.device)
        keep[batch_topk_indices((f * w).detach(), self.k * f.shape[0])] = True
        return f * keep.view_as(f)

    @torch.no_grad()
    def calibrate_threshold(self, batches: Iterable[torch.Tensor]) -> float:
        """Set θ so that, over the raw ``(B, 2, d)`` batches given, exactly ``k`` latents
        per token pass ``f_j w_j > θ`` on average; return θ.

        Why after training, on held-out tokens: an EMA of the smallest kept score during
        training is mostly its first few values (it left L0 at 2.7× k once), and the
        dictionary the threshold serves is the final one. Exact: each batch keeps its
        ``4·k·B`` largest scores; the global cut is ranked among those, and a batch whose
        kept list ends above the cut is re-read with a longer list.
        """
        batches = [b for b in batches if len(b)]
        if not batches:
            raise ValueError("threshold calibration needs at least one held-out token")
        n_tokens = sum(len(b) for b in batches)
        want = self.k * n_tokens
        factor = 4
        while True:
            kept, cuts = [], []
            for x in batches:
                self._check_input(x)
                score = (
                    torch.relu(self._pre(self.normalize(x.to(self.W_dec.dtype)))) * self.selection_weights()
                ).reshape(-1)
                n_keep = min(score.numel(), factor * self.k * len(x))
                top = torch.topk(score, n_keep, sorted=False).values
                kept.append(top[top > 0])
                cuts.append(float(top.min()) if n_keep < score.numel() else 0.0)
            pool = torch.cat(kept)
            if len(pool) <= want:
                theta = 0.0  # fewer positive scores than k per token: keep every one
            else:
                theta = float(torch.topk(pool, want + 1).values[-1])
            if all(c <= theta for c in cuts) or factor * self.k >= self.n_latents:
                self.threshold.fill_(theta)
                return theta
            factor *= 4

    def decode(self, f_NF: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        """Reconstruction ``(N, 2, d)`` from codes: raw space, or the model's space if
        ``normalized`` (what ``normalize(x)`` is compared with)."""
        x_n = torch.einsum("nf,mfd->nmd", f_NF.to(self.W_dec.dtype), self.W_dec) + self.b_dec
        return x_n if normalized else self.denormalize(x_n)

    def forward(self, x_N2d: torch.Tensor) -> torch.Tensor:
        """Raw activations → raw reconstructions, with the inference threshold."""
        return self.decode(self.encode(x_N2d))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != 2 or x.shape[2] != self.d_model:
            raise ValueError(f"expected paired activations of shape (N, 2, {self.d_model}), got {tuple(x.shape)}")

    # ----------------------------------------------------------------- training

    def training_loss(
        self,
        x_n: torch.Tensor,
        dead_F: torch.Tensor | None = None,
        k_aux: int = 0,
        aux_alpha: float = 1.0 / 32,
        sparse: bool = True,
        compute_dtype: torch.dtype | None = None,
        model_weights: torch.Tensor | None = None,
    ) -> LossOutput:
        """Loss on a *normalised* batch ``x_n (B, 2, d)`` with BatchTopK selection.

        ``recon = mean_i Σ_m c_m ‖x_m,i − x̂_m,i‖²`` with ``c = model_weights`` (2,), or 1
        for both (``model_weights_for`` gives the balanced ones). ``sparse`` chooses the fast
        path or the dense-autograd reference; both keep the same pairs and give the same
        gradients. ``compute_dtype`` (e.g. bfloat16) is used for the encoder matmul only.
        """
        B = x_n.shape[0]
        x_BD = x_n.reshape(B, -1)
        w = self.selection_weights()
        if sparse:
            x_hat, cols = _SparseCrossCoder.apply(
                x_BD, self.W_enc_DF, self.b_enc, self.W_dec, w, self.k * B, compute_dtype or x_BD.dtype
            )
        else:
            x_hat, cols = self._dense_main(x_BD, w)
        x_hat = x_hat + self.b_dec
        sq_B2 = (x_hat - x_n).pow(2).sum(2)
        recon = (sq_B2 if model_weights is None else sq_B2 * model_weights.to(sq_B2.dtype)).sum(1).mean()
        aux = x_n.new_zeros(())
        if dead_F is not None and k_aux > 0 and bool(dead_F.any()):
            aux = self._aux_loss(x_BD, (x_n - x_hat).detach().reshape(B, -1), dead_F.nonzero().squeeze(1), k_aux)
        fired = torch.zeros(self.n_latents, dtype=torch.bool, device=x_n.device)
        fired[cols] = True
        return LossOutput(recon + aux_alpha * aux, recon.detach(), aux.detach(), fired, cols.numel() / B)

    def _dense_main(self, x_BD: torch.Tensor, w: torch.Tensor):
        """Reference path: dense pre-activations, a 0/1 mask, dense decode, plain autograd."""
        f = torch.relu(torch.addmm(self.b_enc, x_BD, self.W_enc_DF))
        score = (f * w).detach()
        idx = batch_topk_indices(score, self.k * x_BD.shape[0])
        mask = torch.zeros(f.numel(), dtype=f.dtype, device=f.device)
        mask[idx] = 1.0
        x_hat = torch.einsum("bf,mfd->bmd", f * mask.view_as(f), self.W_dec)
        return x_hat, idx % self.n_latents

    def _aux_loss(self, x_BD: torch.Tensor, e_BD: torch.Tensor, dead_idx: torch.Tensor, k_aux: int) -> torch.Tensor:
        """Aux-k: revive dead latents by having them explain the residual.

        Per token, the top ``k_aux`` dead latents by pre-activation, decoded *without*
        ``b_dec`` (the residual ``e = x − x̂`` already accounts for it), regress the
        *detached* residual (so the main path gets no second gradient); normalised by
        ``mean‖e − mean(e)‖²``. Computed densely over the dead columns only: their
        pre-activations are recomputed (``x W_enc[dead]ᵀ``), which costs ``O(B·d·n_dead)``
        and is cheaper than gathers while few latents are dead.
        """
        pre = torch.addmm(self.b_enc[dead_idx], x_BD, self.W_enc_DF[:, dead_idx])  # (B, n_dead)
        ka = min(k_aux, dead_idx.numel())
        mask = torch.zeros_like(pre).scatter_(1, pre.detach().topk(ka, dim=1).indices, 1.0)
        e_hat = (torch.relu(pre) * mask) @ self.W_dec[:, dead_idx].transpose(0, 1).reshape(-1, 2 * self.d_model)
        denom = (e_BD - e_BD.mean(0)).pow(2).sum(1).mean().clamp_min(1e-12)
        return (e_BD - e_hat).pow(2).sum(1).mean() / denom

    # ----------------------------------------------------------------- persistence

    def config_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "d_model": self.d_model,
            "n_latents": self.n_latents,
            "k": self.k,
            "selection_norm": self.selection_norm,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """Contiguous CPU copies of everything ``save`` writes (also used by checkpoints)."""
        return {name: getattr(self, name).detach().cpu().contiguous() for name in _TENSORS}

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor], source: str = "tensors") -> None:
        for name in _TENSORS:
            if name not in tensors:
                raise CrossCoderFileError(
                    f"{source} has no tensor {name!r}; it was not written by BatchTopKCrossCoder.save"
                )
            target = getattr(self, name)
            if tuple(tensors[name].shape) != tuple(target.shape):
                raise CrossCoderFileError(
                    f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, config.json implies {tuple(target.shape)}"
                )
            target.copy_(tensors[name])

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.json`` atomically into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file(self.tensors(), str(tmp), metadata={"format": FORMAT})
        atomic_write_json(directory / CONFIG_FILE, self.config_dict())
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        *,
        revision: str | None = None,
        hub: Hub | None = None,
    ) -> "BatchTopKCrossCoder":
        """Load a folder written by ``save`` (safetensors only; never pickle), or a hub model
        repo pushed by ``push_to_hub`` when ``directory`` is a string like ``owner/name`` that
        is no local path (``revision``; ``hub``: a ``common.hub.Hub`` for endpoint, token, cache)."""
        if isinstance(directory, str) and not Path(directory).exists() and REPO_ID.fullmatch(directory):
            directory = (hub or Hub()).download(
                directory, revision=revision, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]
            )
        directory = Path(directory)
        cfg = read_config(directory)
        model = cls(cfg["d_model"], cfg["n_latents"], cfg["k"], cfg.get("selection_norm", "l2"), seed=None)
        model.load_tensors(read_weights(directory / WEIGHTS_FILE), source=str(directory / WEIGHTS_FILE))
        return model.to(device)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, hub: Hub | None = None) -> str:
        """Push this cross-coder with a model card to a hub model repo; returns the commit URL."""
        return push_crosscoder(self, repo_id, private=private, hub=hub)


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CrossCoderFileError(
            f"no cross-coder at {directory}: {CONFIG_FILE} is missing. Train one first "
            "(`mneme run STUDY.yaml`, stage 'train') or point to the folder BatchTopKCrossCoder.save wrote."
        )
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CrossCoderFileError(
            f"{path} is not valid JSON ({exc}); the file is damaged — retrain or restore it."
        ) from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CrossCoderFileError(
            f"{path} is not a MNEME cross-coder config (format {cfg.get('format') if isinstance(cfg, dict) else None!r})."
        )
    if cfg.get("format_version") != FORMAT_VERSION:
        raise CrossCoderFileError(
            f"{path} has cross-coder format version {cfg.get('format_version')!r}; this MNEME reads {FORMAT_VERSION}."
        )
    for key in ("d_model", "n_latents", "k"):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            raise CrossCoderFileError(f"{path}: {key!r} must be a positive integer, got {cfg.get(key)!r}")
    return cfg


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or a CrossCoderFileError saying what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CrossCoderFileError(
            f"{path} is missing: the folder has a config but no weights. Retrain (stage 'train') or restore the file."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CrossCoderFileError(
            f"{path} is not a readable safetensors file ({exc}); it is damaged or truncated — retrain or restore it."
        ) from exc


def crosscoder_card(model: BatchTopKCrossCoder, repo_id: str) -> str:
    """README.md of a pushed cross-coder: what it is and the one line that loads it."""
    theta = float(model.threshold)
    return (
        "---\nlibrary_name: mneme\ntags:\n- crosscoder\n- sparse-autoencoder\n- model-diffing\n---\n\n"
        f"# {repo_id}\n\nA BatchTopK cross-coder over a base and a fine-tuned model's activations, written by MNEME: "
        f"d_model {model.d_model}, {model.n_latents} latents, k {model.k}, threshold "
        f"{f'{theta:.6g}' if theta >= 0 else 'not calibrated'}.\n\n```python\n"
        f"from mneme_core import BatchTopKCrossCoder\n\nmodel = BatchTopKCrossCoder.from_pretrained({repo_id!r})\n```\n"
    )


def push_crosscoder(
    model: BatchTopKCrossCoder,
    repo_id: str,
    *,
    private: bool | None = None,
    message: str = "Upload MNEME cross-coder",
    hub: Hub | None = None,
) -> str:
    """Save ``model`` and push it with a model card to a model repo; returns the commit URL."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save(tmp)
        files: dict[str, Path | bytes] = {name: folder / name for name in (WEIGHTS_FILE, CONFIG_FILE)}
        files["README.md"] = crosscoder_card(model, repo_id).encode()
        return (hub or Hub()).upload(repo_id, files, repo_type="model", message=message, private=private)

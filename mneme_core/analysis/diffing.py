"""Per-latent attribution: decoder norms, closed-form latent scaling, labels (docs/DIFFING.md).

Two views of "how much does latent j live in each model":

* **Decoder norms.** ``n_b = ‖W_dec[0, j]‖``, ``n_f = ‖W_dec[1, j]‖``, the relative norm
  ``r = n_f / (n_b + n_f)`` and the cosine of the two rows. Cheap, but a cross-coder can
  shrink a row to ~0 while the other model's activations still carry the direction
  (the "sparsity artifacts" of Minder et al.), so norms alone over-claim.
* **Latent scaling.** For each model m, the least-squares scale β of latent j's
  contribution along a probe direction ``u_j`` in that model's activations::

      β_j = Σ_i f_ij ⟨u_j, y_i⟩ / (‖u_j‖² Σ_i f_ij²)

  with the *error* target ``y = x_m − x̂_m + f_j d_m,j`` (the residual with j's own
  contribution put back) and the *reconstruction* target ``y = x̂_m``. The probe is the
  dominant decoder row (the larger norm) for both models — the fine-tuned row alone
  fails for base-only latents, whose fine-tuned row is ~0 — and, as a second variant,
  each model's own row.

Everything is computed for **all** latents over **all** analysis tokens in one streamed
pass, never one latent at a time: per batch, the codes are made sparse (token, latent,
value) triples; the reconstruction is a sparse decode; ``Σ_i f_ij y_i`` for every latent
is one sparse scatter of ``f_ij · y_i`` (``embedding_bag`` over latent-sorted triples,
O(N·k·d)); the put-back term is ``⟨u_j, d_m,j⟩ Σ_i f_ij²``. Sums over tokens live in
float64 accumulators; memory is bounded by the batch size and a latent-chunk size.

**Space.** β is computed in the cross-coder's *normalised* activation space, the space
its decoder rows live in: ``x`` is ``model.normalize(raw)`` and ``x̂ = f W_dec + b_dec``.
A per-model normalisation scale would otherwise multiply every β_m by that model's
scale and bias every ratio, while the decoder-norm view would be unaffected — the two
views must measure the same thing to be compared.

**The primary β and when to believe it.** The shift and the label come from one
variant, chosen per latent before the pass: the error target, probed along the dominant
row when the two decoder rows are aligned (cosine ≥ ``align_min_cos``) or one of them is
negligible, and along each model's own row otherwise (probing one model along the other
model's row means nothing when the rows point different ways). The same pass accumulates
``Σ f z``, ``Σ f² z²``, ``Σ f³ z`` and ``Σ f⁴`` (``z = ⟨u, y⟩``), which give β's
token-clustered standard error exactly (``primary_betas``). Then (``attribution_labels``):
a latent under the evidence floor (``min_fires`` analysis tokens) is never labelled;
β ≤ 0 in a model is the state "absent" there (``beta_state``), not a huge ratio; a label
needs the shift to clear the unchanged band ±τ by ``z`` standard errors. ``shift =
log2(β_ft/β_base)`` where both β are positive (NaN otherwise); ``ν = β_base/β_ft`` per
target as diagnostics. How the defaults were chosen: docs/DIFFING.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mneme_core.common.config import DiffingConfig, StudyConfig
from mneme_core.run.store import replace_latent_table

# Dense codes f (batch × latents) are the biggest tensor per batch; cap their size so a
# 131k-latent cross-coder streams in smaller batches rather than exhausting memory.
_MAX_CODE_ELEMENTS = 1 << 27
# Cap on the per-chunk scatter output (latents × 4·d floats).
_MAX_SCATTER_ELEMENTS = 1 << 25

BETA_COLUMNS = (
    "beta_err_base",
    "beta_err_ft",
    "beta_recon_base",
    "beta_recon_ft",
    "beta_err_own_base",
    "beta_err_own_ft",
    "beta_recon_own_base",
    "beta_recon_own_ft",
)


# --------------------------------------------------------------------------- decoder norms


def decoder_metrics(W_dec_MFD: torch.Tensor, cfg: DiffingConfig | None = None) -> pd.DataFrame:
    """Decoder norms, relative norm, cosine and the norm label for every latent."""
    cfg = cfg or DiffingConfig()
    W = W_dec_MFD.detach().to("cpu", torch.float64)
    n_b, n_f = W[0].norm(dim=-1), W[1].norm(dim=-1)
    total = n_b + n_f
    rel = torch.where(total > 0, n_f / total.clamp_min(1e-300), torch.full_like(total, float("nan")))
    denom = n_b * n_f
    cos = torch.where(denom > 0, (W[0] * W[1]).sum(-1) / denom.clamp_min(1e-300), torch.zeros_like(denom))
    df = pd.DataFrame(
        {
            "latent": np.arange(W.shape[1], dtype=np.int64),
            "dec_norm_base": n_b.numpy(),
            "dec_norm_ft": n_f.numpy(),
            "rel_norm": rel.numpy(),
            "dec_cos": cos.numpy(),
        }
    )
    df["label_by_norm"] = label_by_norm(df["rel_norm"].to_numpy(), cfg)
    return df


def label_by_norm(rel_norm: np.ndarray, cfg: DiffingConfig | None = None) -> np.ndarray:
    """base_only / ft_only / shared / other from the relative decoder norm (NaN → other)."""
    cfg = cfg or DiffingConfig()
    lo, hi = cfg.shared_band
    r = np.asarray(rel_norm, dtype=np.float64)
    out = np.full(r.shape, "other", dtype=object)
    out[r < cfg.base_only_below] = "base_only"
    out[r > cfg.ft_only_above] = "ft_only"
    out[(r >= lo) & (r <= hi)] = "shared"
    return out


# --------------------------------------------------------------------------- latent scaling


def _iter_batches(activations: Any, batch_size: int, n_tokens: int) -> Iterator[torch.Tensor]:
    """Raw (B, 2, d) batches in store order from a tensor or an ActivationStore."""
    if isinstance(activations, torch.Tensor):
        if activations.ndim != 3 or activations.shape[1] != 2:
            raise ValueError(f"activations must have shape (N, 2, d), got {tuple(activations.shape)}")
        stop = activations.shape[0] if n_tokens <= 0 else min(n_tokens, activations.shape[0])
        for start in range(0, stop, batch_size):
            yield activations[start : min(start + batch_size, stop)]
        return
    limit = None if n_tokens <= 0 else min(n_tokens, activations.n_tokens)
    yield from activations.iter_batches(batch_size, shuffle=False, stop=limit)


def _n_analysis_tokens(activations: Any, n_tokens: int) -> int:
    total = activations.shape[0] if isinstance(activations, torch.Tensor) else activations.n_tokens
    return total if n_tokens <= 0 else min(n_tokens, total)


class _ScalingSums:
    """float64 running sums over tokens, for every latent.

    ``proj[t, p, j] = Σ_i f_ij ⟨probe_p,j, target_t,i⟩`` for targets
    (e_base, e_ft, x̂_base, x̂_ft), ``e = x − x̂``, and probes (dominant, own row of the
    target's model); the error target adds the put-back term at the end.

    For the *primary* β (error target, probe ``u_m,j`` chosen per latent before the pass),
    per model, with ``z_ij = ⟨u_m,j, y_m,i⟩`` the put-back included: ``fz = Σ f z``,
    ``f2z2 = Σ f² z²``, ``f3z = Σ f³ z``, and (model-free) ``f4 = Σ f⁴``: with them the
    token-clustered (sandwich) standard error of β is exact, from this one pass.
    """

    def __init__(self, n_latents: int):
        z = lambda *shape: torch.zeros(*shape, n_latents, dtype=torch.float64)  # noqa: E731
        self.sum_f2, self.count, self.f4 = z(), z(), z()
        self.fz, self.f2z2, self.f3z = z(2), z(2), z(2)
        self.max_act = torch.zeros(n_latents, dtype=torch.float32)
        self.proj = z(4, 2)
        self.n_tokens = 0


def _group_order(ids: torch.Tensor) -> torch.Tensor:
    """A permutation that sorts integer ids. On CPU numpy's stable sort of integers is a
    radix sort, ~5× faster than torch.sort here (it was the largest cost after the scatter)."""
    if ids.device.type == "cpu":
        return torch.from_numpy(np.argsort(ids.numpy(), kind="stable"))
    return torch.sort(ids, stable=True).indices


@torch.no_grad()
def _accumulate(
    sums: _ScalingSums,
    model: Any,
    x_raw_B2d: torch.Tensor,
    probes_PFd: torch.Tensor,
    primary_MFd: torch.Tensor,
) -> None:
    """Add one batch's contributions: sparse decode, sparse scatter, dot with probes, and
    the per-(token, latent) projections the primary β's standard error needs."""
    W_dec, b_dec = model.W_dec, model.b_dec
    device = W_dec.device
    x_raw = x_raw_B2d.to(device=device, dtype=torch.float32)
    B, _, d = x_raw.shape
    F_ = W_dec.shape[1]
    f_BF = model.encode(x_raw, use_threshold=True).float()
    x_B2d = model.normalize(x_raw).float()

    # Sparse codes as token-sorted (token, latent, value) triples; crow = offsets per token.
    tok, lat = f_BF.nonzero(as_tuple=True)
    val = f_BF[tok, lat]
    crow = torch.searchsorted(tok, torch.arange(B + 1, device=device))

    # Sparse decode: x̂_m = Σ_j f_ij W_dec[m, j] + b_dec[m], without touching inactive latents.
    W32 = W_dec.detach().float()
    xhat = [
        F.embedding_bag(lat, W32[m], crow[:-1], mode="sum", per_sample_weights=val) + b_dec[m].float() for m in range(2)
    ]
    # Targets as columns: [e_base | e_ft | x̂_base | x̂_ft]  (B, 4d), e = x − x̂ per token
    # (subtracting per token, not after summing, keeps float32 partial sums accurate).
    Y_B4d = torch.cat([x_B2d[:, 0] - xhat[0], x_B2d[:, 1] - xhat[1], xhat[0], xhat[1]], dim=1)

    v64 = val.double()
    sums.sum_f2 += torch.bincount(lat, weights=v64 * v64, minlength=F_).cpu()
    sums.f4 += torch.bincount(lat, weights=v64**4, minlength=F_).cpu()
    sums.count += torch.bincount(lat, minlength=F_).double().cpu()
    if val.numel():
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(crow, lat, torch.ones_like(val), (B, F_), check_invariants=False)
        for m in range(2):
            u_Fd = primary_MFd[m]
            # z = ⟨u, e_m,i⟩ + f ⟨u, d_m⟩ for every kept pair, in the pairs' (token-major) order
            z = torch.sparse.sampled_addmm(
                pattern, Y_B4d[:, m * d : (m + 1) * d].contiguous(), u_Fd.t(), beta=0.0
            ).values()
            z = z.double() + v64 * (u_Fd * W32[m]).sum(-1).double()[lat]
            sums.fz[m] += torch.bincount(lat, weights=v64 * z, minlength=F_).cpu()
            sums.f2z2[m] += torch.bincount(lat, weights=(v64 * z) ** 2, minlength=F_).cpu()
            sums.f3z[m] += torch.bincount(lat, weights=v64**3 * z, minlength=F_).cpu()
    if val.numel():
        batch_max = torch.zeros(F_, device=device).scatter_reduce(0, lat, val, "amax")
        sums.max_act = torch.maximum(sums.max_act, batch_max.cpu())
    sums.n_tokens += B

    # Latent-sorted triples so each latent's tokens are one contiguous bag.
    order = _group_order(lat)
    lat_sorted = lat[order]
    tok_sorted, val_sorted = tok[order], val[order]
    bounds = torch.searchsorted(lat_sorted, torch.arange(F_ + 1, device=device))
    chunk = max(1, _MAX_SCATTER_ELEMENTS // (4 * d))
    for a in range(0, F_, chunk):
        b = min(a + chunk, F_)
        s, e = int(bounds[a]), int(bounds[b])
        if s == e:
            continue
        # G[j] = Σ_i f_ij y_i for latents a..b, viewed (b−a, e|x̂, model, d). One batch's
        # partial sums stay float32 (≤ batch terms each); the running sums are float64.
        G = F.embedding_bag(
            tok_sorted[s:e],
            Y_B4d,
            bounds[a:b] - s,
            mode="sum",
            per_sample_weights=val_sorted[s:e],
        ).view(b - a, 2, 2, d)
        dom = probes_PFd[0, a:b]  # (b−a, d)
        own = probes_PFd[1:, a:b].transpose(0, 1)  # (b−a, model, d): each model's own row
        sums.proj[:, 0, a:b] += torch.einsum("jsmd,jd->smj", G, dom).reshape(4, b - a).double().cpu()
        sums.proj[:, 1, a:b] += torch.einsum("jsmd,jmd->smj", G, own).reshape(4, b - a).double().cpu()


def _betas(
    sums: _ScalingSums, probes_PFd: torch.Tensor, W_dec64_MFd: torch.Tensor, eps: float
) -> dict[str, np.ndarray]:
    """Assemble β for both targets, both probes, both models from the sums."""
    out: dict[str, np.ndarray] = {}
    probes = probes_PFd.cpu().double()
    W = W_dec64_MFd.cpu()
    sum_f2 = sums.sum_f2
    for p, tag in ((0, ""), (1, "_own")):
        for m, model_name in ((0, "base"), (1, "ft")):
            u = probes[0] if p == 0 else probes[1 + m]
            u2 = (u * u).sum(-1)
            denom = u2 * sum_f2
            put_back = (u * W[m]).sum(-1) * sum_f2
            err_num = sums.proj[m, p] + put_back
            rec_num = sums.proj[2 + m, p]
            ok = denom > eps
            nan = torch.full_like(denom, float("nan"))
            out[f"beta_err{tag}_{model_name}"] = torch.where(ok, err_num / denom.clamp_min(eps), nan).numpy()
            out[f"beta_recon{tag}_{model_name}"] = torch.where(ok, rec_num / denom.clamp_min(eps), nan).numpy()
    return out


def beta_ratio(beta_base: np.ndarray, beta_ft: np.ndarray, eps: float) -> np.ndarray:
    """``ν = β_base / β_ft`` (NaN where ``|β_ft| ≤ eps`` or either is missing)."""
    b, f = np.asarray(beta_base, np.float64), np.asarray(beta_ft, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(f) & (np.abs(f) > eps), b / np.where(f == 0, 1.0, f), np.nan)


def primary_betas(sums: _ScalingSums, primary_MFd: torch.Tensor, eps: float) -> dict[str, np.ndarray]:
    """The primary β per model and its standard error, from the pass's sums.

    ``β = Σ f z / (‖u‖² Σ f²)`` (``z = ⟨u, y⟩``); the error is clustered by token (each
    token is one observation of the whole vector ``y``): ``se² = Σ f² r² / (‖u‖² Σ f²)²``
    with ``r = z − β ‖u‖² f``, expanded into the accumulated sums.
    """
    out: dict[str, np.ndarray] = {}
    for m, name in ((0, "base"), (1, "ft")):
        u2 = primary_MFd[m].double().pow(2).sum(-1).cpu()
        denom = u2 * sums.sum_f2
        ok = denom > eps
        beta = torch.where(ok, sums.fz[m] / denom.clamp_min(eps), torch.nan)
        b0 = torch.nan_to_num(beta)
        meat = sums.f2z2[m] - 2 * b0 * u2 * sums.f3z[m] + (b0 * u2) ** 2 * sums.f4
        se = torch.where(ok, meat.clamp_min(0).sqrt() / denom.clamp_min(eps), torch.nan)
        out[f"beta_{name}"], out[f"beta_se_{name}"] = beta.numpy(), se.numpy()
    return out


BETA_STATES = ("too_few_fires", "absent_both", "absent_base", "absent_ft", "present")


def attribution_labels(
    beta_base: np.ndarray,
    beta_ft: np.ndarray,
    se_base: np.ndarray,
    se_ft: np.ndarray,
    fires: np.ndarray,
    cfg: DiffingConfig,
) -> pd.DataFrame:
    """``beta_state, shift, shift_se, attribution`` per latent from the primary β.

    States: ``too_few_fires`` (under the evidence floor ``min_fires``: never labelled);
    ``absent_both`` / ``absent_base`` / ``absent_ft`` (β ≤ 0 in that model: "not there",
    whose ratio is undefined — shift is NaN, not a huge number); ``present``. For present
    latents ``shift = log2(β_ft/β_base)`` (|shift| ≤ max_shift) with a delta-method error.

    Labels test against the edge of the unchanged band on the linear scale, where the
    errors are (nearly) Gaussian and a β near 0 is no problem: amplified when
    ``β_ft − 2^τ β_base > z·√(se_ft² + 4^τ se_base²)``, suppressed when
    ``2^−τ β_base − β_ft > z·√(se_ft² + 4^−τ se_base²)``; and the model the latent is
    claimed to live in must carry it (β > z·se there). A latent absent in the fine-tuned
    model is suppressed by the same rule, once the base carries it clearly.
    """
    b, f = np.asarray(beta_base, np.float64), np.asarray(beta_ft, np.float64)
    sb, sf = np.asarray(se_base, np.float64), np.asarray(se_ft, np.float64)
    enough = (np.asarray(fires) >= cfg.min_fires) & np.isfinite(b) & np.isfinite(f)
    b_pos, f_pos = enough & (b > 0), enough & (f > 0)
    state = np.full(b.shape, "too_few_fires", dtype=object)
    state[enough & ~b_pos & ~f_pos] = "absent_both"
    state[enough & ~b_pos & f_pos] = "absent_base"
    state[enough & b_pos & ~f_pos] = "absent_ft"
    both = b_pos & f_pos
    state[both] = "present"
    up, down = 2.0**cfg.tau, 2.0**-cfg.tau
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(both, np.clip(np.log2(f / b), -cfg.max_shift, cfg.max_shift), np.nan)
        shift_se = np.where(both, np.sqrt((sf / f) ** 2 + (sb / b) ** 2) / np.log(2), np.nan)
        amplified = enough & (f > cfg.z * sf) & (f - up * b > cfg.z * np.sqrt(sf**2 + up**2 * sb**2))
        suppressed = enough & (b > cfg.z * sb) & (down * b - f > cfg.z * np.sqrt(sf**2 + down**2 * sb**2))
    label = np.full(b.shape, "unchanged", dtype=object)
    label[amplified] = "amplified"
    label[suppressed] = "suppressed"
    return pd.DataFrame({"beta_state": state, "shift": shift, "shift_se": shift_se, "attribution": label})


def primary_probes(W_dec_MFd: torch.Tensor, cfg: DiffingConfig) -> tuple[torch.Tensor, np.ndarray]:
    """The probe ``u_m,j`` of the primary β (2, F, d) and which kind each latent got.

    The dominant row (the larger norm) for both models when the two rows are aligned
    (cosine ≥ ``align_min_cos``) or one of them is negligible (the relative-norm bands of
    a base-only / ft-only latent): then "how much of this direction is in model m" means
    the same in both. Rows that point different ways are probed each along its own row.
    """
    W = W_dec_MFd.float()
    n_b, n_f = W[0].norm(dim=-1), W[1].norm(dim=-1)
    rel = n_f / (n_b + n_f).clamp_min(1e-30)
    cos = (W[0] * W[1]).sum(-1) / (n_b * n_f).clamp_min(1e-30)
    one_sided = (rel < cfg.base_only_below) | (rel > cfg.ft_only_above)
    use_dominant = (cos >= cfg.align_min_cos) | one_sided
    dominant = torch.where((n_b >= n_f)[:, None], W[0], W[1])
    primary = torch.stack([torch.where(use_dominant[:, None], dominant, W[m]) for m in range(2)])
    return primary, np.where(use_dominant.cpu().numpy(), "dominant", "own")


def latent_table(
    model: Any,
    activations: torch.Tensor | Iterable[Any] | Any,
    cfg: DiffingConfig | None = None,
    *,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per latent: decoder metrics, β (8 variants), ν, shift, labels, freq, max_act.

    ``activations`` is a raw (N, 2, d) tensor or an ActivationStore; the first
    ``cfg.n_tokens`` tokens are used (0 = all). ``model`` is a BatchTopKCrossCoder (codes
    from ``encode(x, use_threshold=True)``).
    """
    cfg = cfg or DiffingConfig()
    W_dec = model.W_dec.detach()
    n_latents = W_dec.shape[1]
    table = decoder_metrics(W_dec, cfg)

    W32 = W_dec.float()
    dominant = torch.where((W32[0].norm(dim=-1) >= W32[1].norm(dim=-1))[:, None], W32[0], W32[1])
    probes_PFd = torch.stack([dominant, W32[0], W32[1]])  # dominant, own base, own ft
    primary_MFd, probe_kind = primary_probes(W_dec, cfg)

    batch = max(1, min(cfg.batch_size, _MAX_CODE_ELEMENTS // n_latents))
    total = _n_analysis_tokens(activations, cfg.n_tokens)
    if total == 0:
        raise ValueError("latent scaling needs at least one activation token; the store is empty")
    sums = _ScalingSums(n_latents)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with tqdm(total=total, unit="tok", desc="latent scaling", disable=not progress, dynamic_ncols=True) as bar:
            for x in _iter_batches(activations, batch, cfg.n_tokens):
                _accumulate(sums, model, x, probes_PFd, primary_MFd)
                bar.update(x.shape[0])
    finally:
        if was_training:
            model.train()

    betas = _betas(sums, probes_PFd, W_dec.double(), cfg.eps)
    for name in BETA_COLUMNS:
        table[name] = betas[name]
    table["nu_err"] = beta_ratio(betas["beta_err_base"], betas["beta_err_ft"], cfg.eps)
    table["nu_recon"] = beta_ratio(betas["beta_recon_base"], betas["beta_recon_ft"], cfg.eps)
    primary = primary_betas(sums, primary_MFd, cfg.eps)
    for name, values in primary.items():
        table[name] = values
    table["probe"] = probe_kind
    table["n_fires"] = sums.count.numpy().astype(np.int64)
    labels = attribution_labels(
        primary["beta_base"],
        primary["beta_ft"],
        primary["beta_se_base"],
        primary["beta_se_ft"],
        table["n_fires"].to_numpy(),
        cfg,
    )
    for column in labels.columns:
        table[column] = labels[column].to_numpy()
    table["freq"] = (sums.count / max(sums.n_tokens, 1)).numpy()
    table["max_act"] = sums.max_act.double().numpy()
    return table


# --------------------------------------------------------------------------- stage


def run_stage(cfg: StudyConfig, run_path: Path, *, progress: bool = True) -> dict[str, Any]:
    """Diff stage: the latents table from the trained cross-coder and the activation store."""
    from mneme_core.collect.activations import ActivationStore
    from mneme_core.collect.models import resolve_device
    from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder

    run_path = Path(run_path)
    # on the study's device: one encode per token, which on a paper-size dictionary is
    # the same work as an epoch of training
    model = BatchTopKCrossCoder.from_pretrained(run_path / "crosscoder").to(resolve_device(cfg.models.device))
    store = ActivationStore(run_path / "activations")
    table = latent_table(model, store, cfg.diffing, progress=progress)
    replace_latent_table(run_path, table)
    counts = table["attribution"].value_counts()
    norm_counts = table["label_by_norm"].value_counts()
    return {
        "n_latents": int(len(table)),
        "n_tokens": _n_analysis_tokens(store, cfg.diffing.n_tokens),
        "amplified": int(counts.get("amplified", 0)),
        "suppressed": int(counts.get("suppressed", 0)),
        "unchanged": int(counts.get("unchanged", 0)),
        "base_only": int(norm_counts.get("base_only", 0)),
        "ft_only": int(norm_counts.get("ft_only", 0)),
        "shared": int(norm_counts.get("shared", 0)),
        "never_fired": int((table["freq"] == 0).sum()),
        **{f"state_{k}": int((table["beta_state"] == k).sum()) for k in BETA_STATES},
    }

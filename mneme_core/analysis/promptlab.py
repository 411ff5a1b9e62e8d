"""Prompt lab: run a text through both models and the run's cross-coder, per token.

For each token the cross-coder reads the paired residuals ``[a_base; a_ft]`` and gives
one sparse code ``f``. How a latent differs between the models is in its two decoder
rows: it writes ``f_j·‖d_base,j‖`` into the base model and ``f_j·‖d_ft,j‖`` into the
fine-tuned one. The lab reports both, so a suppressed latent shows up as a token where
the fine-tuned model receives much less of that latent than the base does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch


class LabError(RuntimeError):
    """The run's models or cross-coder cannot be loaded; the message says why."""


@dataclass
class Lab:
    base: torch.nn.Module
    ft: torch.nn.Module
    tokenizer: Any
    layer: int
    crosscoder: Any  # BatchTopKCrossCoder
    norms_MF: np.ndarray  # decoder row norms per model, (2, F)


def load_lab(run_path: str | Path, manifest: dict[str, Any], device: str = "cpu") -> Lab:
    """Load both models named in the manifest and the run's cross-coder, or raise LabError."""
    folder = Path(run_path) / "crosscoder"
    if not (folder / "model.safetensors").is_file():
        raise LabError(f"no trained cross-coder in {folder} (the train stage writes it)")
    try:
        from mneme_core.collect.models import load_model_pair
        from mneme_core.common.config import load_config, resolve_run_relative
        from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder

        cfg = load_config(resolve_run_relative(manifest.get("config", {}), run_path))
        pair = load_model_pair(cfg.models, device=device)
        crosscoder = BatchTopKCrossCoder.from_pretrained(folder).to(device).eval()
    except LabError:
        raise
    except Exception as exc:  # any loader failure becomes one readable message
        raise LabError(f"{type(exc).__name__}: {exc}") from exc
    pair.base.eval()
    pair.ft.eval()
    norms = crosscoder.W_dec.detach().float().norm(dim=-1).cpu().numpy()
    return Lab(pair.base, pair.ft, pair.tokenizer, pair.layer, crosscoder, norms)


@dataclass
class Analysis:
    tokens: list[str]  # decoded text with its leading space, as the contexts stage stores tokens
    f_TF: np.ndarray  # latent activations per token
    base_write_T: np.ndarray  # Σ_j f_j ‖d_base,j‖ per token
    ft_write_T: np.ndarray


def analyse(lab: Lab, text: str, max_tokens: int = 256) -> Analysis:
    """Encode ``text`` with both models up to the run's layer and through the cross-coder."""
    from mneme_core.analysis.contexts import TokenDecoder
    from mneme_core.collect.models import truncated_forward

    if not text.strip():
        raise LabError("type some text first")
    ids_list = lab.tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
    # Like the collected corpus, the text follows a BOS: the first position is an attention
    # sink with outsized activations, which the cross-coder never saw on a real token.
    bos = lab.tokenizer.bos_token_id
    lead = [bos] if bos is not None else []
    device = next(lab.base.parameters()).device
    ids = torch.tensor([lead + list(ids_list)], device=device)
    with torch.inference_mode():
        a_b = truncated_forward(lab.base, ids, None, lab.layer)[0, len(lead) :]
        a_f = truncated_forward(lab.ft, ids, None, lab.layer)[0, len(lead) :]
        x_T2d = torch.stack([a_b, a_f], dim=1).float()
        f_TF = lab.crosscoder.encode(x_T2d).float().cpu().numpy()
    # decoded like the stored contexts, not the tokenizer's own names ("Ġvirus", "▁virus")
    tokens = TokenDecoder(lab.tokenizer).strings(np.asarray(ids_list, dtype=np.int64)).to_pylist()
    return Analysis(tokens, f_TF, f_TF @ lab.norms_MF[0], f_TF @ lab.norms_MF[1])


def firing_table(analysis: Analysis, latents: pd.DataFrame | None = None, top: int = 5) -> pd.DataFrame:
    """One row per token: the ``top`` latents that fire most and the base / ft write."""
    f = analysis.f_TF
    k = min(top, f.shape[1])
    idx = np.argsort(-f, axis=1)[:, :k]
    desc = (
        latents.set_index("latent")["description"] if latents is not None and "description" in latents.columns else None
    )
    rows = []
    for t, token in enumerate(analysis.tokens):
        fired = [(int(j), float(f[t, j])) for j in idx[t] if f[t, j] > 0]
        rows.append(
            {
                "position": t,
                "token": token,
                "latents": ", ".join(f"{j} ({v:.2g})" for j, v in fired),
                "top latent": fired[0][0] if fired else None,
                "top description": str(desc.get(fired[0][0], "")) if fired and desc is not None else "",
                "base write": float(analysis.base_write_T[t]),
                "ft write": float(analysis.ft_write_T[t]),
                "ft − base": float(analysis.ft_write_T[t] - analysis.base_write_T[t]),
            }
        )
    return pd.DataFrame(rows)


def latent_summary(
    analysis: Analysis, norms_MF: np.ndarray, latents: pd.DataFrame | None = None, top: int = 30
) -> pd.DataFrame:
    """Latents that fired on the text, largest |ft − base| write first."""
    f = analysis.f_TF
    total_F = f.sum(axis=0)
    fired = np.flatnonzero(total_F > 0)
    diff = total_F[fired] * (norms_MF[1, fired] - norms_MF[0, fired])
    table = pd.DataFrame(
        {
            "latent": fired.astype(np.int64),
            "tokens fired": (f[:, fired] > 0).sum(axis=0),
            "total activation": total_F[fired],
            "base write": total_F[fired] * norms_MF[0, fired],
            "ft write": total_F[fired] * norms_MF[1, fired],
            "ft − base": diff,
        }
    )
    if latents is not None:
        keep = [c for c in ("latent", "description", "attribution", "shift") if c in latents.columns]
        table = table.merge(latents[keep], on="latent", how="left")
    order = np.argsort(-np.abs(table["ft − base"].to_numpy()), kind="stable")
    return table.iloc[order[:top]].reset_index(drop=True)

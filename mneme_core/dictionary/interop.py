"""Cross-coders in and out of dictionary_learning's layout, and runs shared on the hub.

**dictionary_learning's BatchTopK cross-coder** (``BatchTopKCrossCoder`` of the
``dictionary_learning`` library) keeps, for ``M`` models, width ``d`` and ``F`` latents:

===========================  ==========  ==========================================
tensor                       shape       MNEME
===========================  ==========  ==========================================
``encoder.weight``           (M, d, F)   ``W_enc``
``encoder.bias``             (F,)        ``b_enc``
``decoder.weight``           (M, F, d)   ``W_dec``
``decoder.bias``             (M, d)      ``b_dec``
``threshold``                ()          ``threshold`` (negative = not calibrated)
``k``                        () int      ``k`` (config)
``code_normalization_id``    () int      1 = CROSSCODER, the only one MNEME reads
``activation_mean``          (M, d)      folded into the biases (see below)
``activation_std``           (M, d)      only checked
``activation_global_scale``  (M,)        ``norm_scale``
``target_rms``               ()          only checked
===========================  ==========  ==========================================

The maths is MNEME's own: ``f = relu(Σ_m x_m W[m] + b)``; a latent is kept when
``f_j Σ_m ‖W_dec[m, j]‖ > threshold`` (its CROSSCODER code normalisation is MNEME's
``selection_norm="l2"``, so the threshold means the same in both); ``x̂_m = f W_dec[m] +
b_dec[m]``. ``encode`` returns the unscaled ``f`` in both.

Activation normalisation is where they differ. MNEME multiplies raw activations by
``norm_scale`` (one entry per model; MNEME's own training sets both to one shared factor, so
a change of scale between the models is kept) before encoding and divides after decoding. Newer
dictionary_learning releases carry a normaliser: ``x_n = (x − activation_mean) ·
activation_global_scale`` (the "keep relative variance" mode, ``global_scale = target_rms /
sqrt(Σ std² + 1e-8)``), undone after decoding. Older releases carry none: the model works
on raw activations (the training scale was folded into the biases). So:

* import, no normaliser: ``norm_scale = 1``, tensors as they are;
* import, normaliser ``(μ, g)``: ``norm_scale = g`` and the mean goes into the biases —
  ``b_enc ← b − Σ_m g_m μ_m W_enc[m]``, ``b_dec[m] ← b_dec[m] + g_m μ_m`` — which gives
  the same pre-activations and reconstructions, and leaves the decoder (hence the
  threshold) untouched. A per-dimension normaliser (``x / std``) is no scalar and is refused;
* export (default): MNEME's tensors as they are, with a normaliser of mean 0 and global
  scale ``norm_scale`` (``activation_std`` chosen to match), for releases that have one;
* export ``legacy=True`` (releases without a normaliser): the scale is folded into the
  weights, ``W_enc[m] · s``, ``W_dec[m] / s``, ``b_dec[m] / s``, ``threshold / s``: codes stay
  identical, and the one shared ``s`` keeps the two models' relative decoder norms.

Every file is safetensors; pickled ``.pt`` checkpoints are refused, never unpickled.

**The hub.** ``common.hub.Hub`` wraps huggingface_hub's ``snapshot_download`` and ``create_commit`` for
MNEME's cross-coders (model repos, ``BatchTopKCrossCoder.from_pretrained`` /
``push_to_hub``) and runs (dataset repos, ``Run.from_pretrained`` / ``push_to_hub``,
``run.sharing``). A pushed run carries its tables, manifest and cross-coder, not its
activation shards (large, and the models reproduce them) nor the auditors' triage marks.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from mneme_core.common.atomic import atomic_path, atomic_write_json
from mneme_core.common.config import MANIFEST
from mneme_core.common.errors import InteropError
from mneme_core.common.hub import REPO_ID, Hub
from mneme_core.dictionary.crosscoder import (
    CONFIG_FILE,
    FORMAT,
    WEIGHTS_FILE,
    BatchTopKCrossCoder,
    CrossCoderFileError,
    read_weights,
)
from mneme_core.run.store import add_provenance, read_manifest, set_stage

DL_FORMAT = "dictionary_learning"
DL_CROSSCODER_NORM = 1  # CodeNormalization.CROSSCODER: the selection weight Σ_m ‖W_dec[m, j]‖
DL_NORMALISER = ("activation_mean", "activation_std", "activation_global_scale", "target_rms")


# --------------------------------------------------------------------------- dictionary_learning


def to_dictionary_learning(model: BatchTopKCrossCoder, legacy: bool = False) -> dict[str, torch.Tensor]:
    """dictionary_learning's state dict of ``model`` (see the module doc for the mapping)."""
    if model.selection_norm != "l2":
        raise InteropError(
            f"cannot export a cross-coder with selection_norm {model.selection_norm!r}: dictionary_learning's "
            "CROSSCODER code normalisation is the sum of plain decoder norms ('l2')"
        )
    t = {k: v.double() for k, v in model.tensors().items()}
    s, theta = t["norm_scale"], float(t["threshold"])
    out = {
        "encoder.weight": t["W_enc"],
        "encoder.bias": t["b_enc"],
        "decoder.weight": t["W_dec"],
        "decoder.bias": t["b_dec"],
        "threshold": torch.tensor(theta),
    }
    if legacy:
        if not torch.allclose(s[0], s[1], rtol=1e-6):
            raise InteropError(
                f"cannot fold two different activation scales {s.tolist()} into a legacy layout: the selection "
                "weights would change; export without --legacy (the normaliser keeps one scale per model)"
            )
        out["encoder.weight"] = t["W_enc"] * s[:, None, None]
        out["decoder.weight"] = t["W_dec"] / s[:, None, None]
        out["decoder.bias"] = t["b_dec"] / s[:, None]
        out["threshold"] = torch.tensor(theta / float(s[0]) if theta >= 0 else -1.0)
    else:
        d = model.d_model
        out["activation_mean"] = torch.zeros(2, d, dtype=torch.float64)
        out["activation_std"] = (1.0 / (s * math.sqrt(d)))[:, None].expand(2, d).contiguous()
        out["activation_global_scale"] = s
        out["target_rms"] = torch.tensor(1.0)
    tensors = {k: v.float().contiguous() for k, v in out.items()}
    tensors["k"] = torch.tensor(model.k, dtype=torch.int32)
    tensors["code_normalization_id"] = torch.tensor(DL_CROSSCODER_NORM, dtype=torch.int64)
    return tensors


def _expect(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], source: str) -> torch.Tensor:
    """The tensor ``name`` of the expected shape, or one line naming what is wrong."""
    if name not in tensors:
        raise InteropError(
            f"{source}: no tensor {name!r} (expected shape {shape}); not a dictionary_learning cross-coder"
        )
    value = tensors[name]
    if tuple(value.shape) != shape:
        raise InteropError(f"{source}: tensor {name!r} has shape {tuple(value.shape)}, expected {shape}")
    return value.double()


def from_dictionary_learning(
    tensors: dict[str, torch.Tensor], source: str = "state dict", code_normalization: str | None = None
) -> BatchTopKCrossCoder:
    """A MNEME cross-coder from dictionary_learning's state dict (raw-activation outputs equal).

    ``code_normalization`` is the name in the folder's config.json, used when the state dict
    has no ``code_normalization_id`` (older releases, which meant CROSSCODER).
    """
    tensors = {k.removeprefix("_orig_mod."): v for k, v in tensors.items()}  # saved from a torch.compile'd model
    if "encoder.weight" not in tensors:
        raise InteropError(
            f"{source}: no tensor 'encoder.weight' (expected shape (2, d_model, n_latents)); "
            "not a dictionary_learning cross-coder"
        )
    shape = tuple(tensors["encoder.weight"].shape)
    if len(shape) != 3 or shape[0] != 2:
        raise InteropError(
            f"{source}: tensor 'encoder.weight' has shape {shape}, expected (2, d_model, n_latents): "
            "MNEME cross-codes exactly two models (base, fine-tuned)"
        )
    _, d, n = shape
    unknown = sorted(
        set(tensors)
        - {
            "encoder.weight",
            "encoder.bias",
            "decoder.weight",
            "decoder.bias",
            "threshold",
            "k",
            "code_normalization_id",
            *DL_NORMALISER,
        }
    )
    if unknown:
        raise InteropError(
            f"{source}: unexpected tensor {unknown[0]!r}; not part of dictionary_learning's BatchTopKCrossCoder layout"
        )
    W_enc = _expect(tensors, "encoder.weight", (2, d, n), source)
    b_enc = _expect(tensors, "encoder.bias", (n,), source)
    W_dec = _expect(tensors, "decoder.weight", (2, n, d), source)
    b_dec = _expect(tensors, "decoder.bias", (2, d), source)
    theta = float(_expect(tensors, "threshold", (), source))
    k = int(_expect(tensors, "k", (), source))
    if not 0 < k <= n:
        raise InteropError(f"{source}: tensor 'k' is {k}; it must be between 1 and the {n} latents")
    norm_id = (
        int(_expect(tensors, "code_normalization_id", (), source))
        if "code_normalization_id" in tensors
        else {None: DL_CROSSCODER_NORM, "CROSSCODER": DL_CROSSCODER_NORM}.get(code_normalization, -1)
    )
    if norm_id != DL_CROSSCODER_NORM:
        raise InteropError(
            f"{source}: tensor 'code_normalization_id' is {norm_id if norm_id >= 0 else code_normalization!r}; MNEME "
            f"reads only CROSSCODER ({DL_CROSSCODER_NORM}), whose threshold weighs latents by Σ_m ‖W_dec[m, j]‖"
        )
    scale = torch.ones(2, dtype=torch.float64)
    if any(name in tensors for name in DL_NORMALISER):
        mean = _expect(tensors, "activation_mean", (2, d), source)
        std = _expect(tensors, "activation_std", (2, d), source)
        if not (torch.isnan(mean).any() or torch.isnan(std).any()):  # NaN statistics: no normaliser
            scale = _expect(tensors, "activation_global_scale", (2,), source)
            rms = float(_expect(tensors, "target_rms", (), source)) if "target_rms" in tensors else 1.0
            implied = rms / std.pow(2).sum(-1).sqrt()  # up to dictionary_learning's 1e-8 under the root
            if not torch.all(scale > 0) or not torch.allclose(scale, implied, rtol=1e-3):
                raise InteropError(
                    f"{source}: tensor 'activation_global_scale' {scale.tolist()} is not target_rms / sqrt(Σ std²) "
                    f"= {implied.tolist()}: a per-dimension normaliser (x / std) has no scalar equivalent in MNEME"
                )
            b_enc = b_enc - torch.einsum("m,md,mdf->f", scale, mean, W_enc)
            b_dec = b_dec + scale[:, None] * mean
    model = BatchTopKCrossCoder(d, n, k, "l2", seed=None)
    model.load_tensors(
        {
            "W_enc": W_enc,
            "b_enc": b_enc,
            "W_dec": W_dec,
            "b_dec": b_dec,
            "threshold": torch.tensor(theta if theta >= 0 else -1.0),
            "norm_scale": scale,
        },
        source=source,
    )
    return model


def _refuse_to_overwrite_a_mneme_crosscoder(dest: Path) -> None:
    """An export into a folder holding a MNEME cross-coder (a run's own ``crosscoder/``)
    would replace the weights every later stage reads with another library's layout."""
    try:
        held = json.loads((dest / CONFIG_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        held = False
    if held:
        raise InteropError(f"{dest} holds a MNEME cross-coder, which the export would overwrite; give another folder")


def write_dictionary_learning(model: BatchTopKCrossCoder, dest: str | Path, legacy: bool = False) -> Path:
    """``dest/model.safetensors`` + ``dest/config.json`` in dictionary_learning's hub layout.

    The config holds the constructor arguments its ``from_pretrained`` (hub mixin) passes on.
    """
    from safetensors.torch import save_file

    dest = Path(dest)
    _refuse_to_overwrite_a_mneme_crosscoder(dest)
    tensors = to_dictionary_learning(model, legacy)
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "exported_by": "mneme"})
    config: dict[str, Any] = {
        "activation_dim": model.d_model,
        "dict_size": model.n_latents,
        "num_layers": 2,
        "k": model.k,
        "code_normalization": "CROSSCODER",
    }
    if not legacy:
        config["target_rms"] = 1.0
    atomic_write_json(dest / CONFIG_FILE, config)
    return dest


# --------------------------------------------------------------------------- reading any source


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_in(folder: Path) -> Path:
    """The one safetensors file of a cross-coder folder (``model.safetensors`` first)."""
    if (folder / WEIGHTS_FILE).is_file():
        return folder / WEIGHTS_FILE
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    if found:
        raise InteropError(
            f"{folder} holds several safetensors files ({', '.join(p.name for p in found)}); point to the one to import"
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".ckpt"))
    hint = (
        f" (it has {', '.join(pickles)}: pickled checkpoints are never loaded; re-save them with safetensors)"
        if pickles
        else ""
    )
    raise InteropError(f"{folder} has no safetensors file{hint}")


def read_crosscoder(
    source: str | Path, revision: str | None = None, hub: Hub | None = None
) -> tuple[BatchTopKCrossCoder, dict[str, Any]]:
    """A cross-coder from a folder, a safetensors file or a hub repo id, in MNEME's or
    dictionary_learning's layout; with a provenance record (where, which format, sha256)."""
    text = str(source)
    path = Path(source)
    record: dict[str, Any] = {"kind": "crosscoder", "source": text}
    if not path.exists():
        if isinstance(source, Path) or not REPO_ID.fullmatch(text):
            raise InteropError(f"no cross-coder at {text}: no such file or folder (nor a hub repo id like owner/name)")
        path = (hub or Hub()).download(text, revision=revision, allow_patterns=["*.safetensors", "*.json"])
        record.update(hub_repo=text, revision=path.name)  # the snapshot folder is named by its commit
    weights = _weights_in(path) if path.is_dir() else path
    if weights.suffix != ".safetensors":
        raise InteropError(
            f"{weights} is not a safetensors file; pickled checkpoints are never loaded, re-save it with safetensors"
        )
    config_path = weights.parent / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        config = config if isinstance(config, dict) else {}
        tensors = read_weights(weights)
        if config.get("format") == FORMAT or "W_enc" in tensors:
            model, fmt = BatchTopKCrossCoder.from_pretrained(weights.parent), FORMAT
        else:
            model, fmt = from_dictionary_learning(tensors, str(weights), config.get("code_normalization")), DL_FORMAT
    except json.JSONDecodeError as exc:
        raise InteropError(f"{config_path} is not valid JSON ({exc})") from exc
    except CrossCoderFileError as exc:
        raise InteropError(str(exc)) from exc
    record.update(format=fmt, sha256=_sha256(weights))
    return model, record


# --------------------------------------------------------------------------- into and out of runs


def _target_run(target: str | Path) -> Path:
    """The run folder of ``target``: a run directory, or a study YAML (its run is created)."""
    target = Path(target)
    if target.is_dir():
        read_manifest(target)  # a clear error when the folder is not a run
        return target
    if target.is_file():
        from mneme_core.run.pipeline import run_study

        return run_study(target, stages=[], progress=False)  # creates the run and its manifest only
    raise InteropError(f"{target} is neither a run directory nor a study YAML file")


def import_crosscoder(
    source: str | Path, target: str | Path, *, revision: str | None = None, force: bool = False, hub: Hub | None = None
) -> Path:
    """Put a cross-coder into a run as its trained one, so the study goes on at ``diff``.

    The train stage becomes complete with metrics saying it was imported and from where
    (the provenance gets the same record); re-running earlier stages keeps it (see
    ``pipeline``). A run that already has a cross-coder needs ``force``; later stages built
    on the old one then turn stale. Returns the run folder.
    """
    from mneme_core.run.pipeline import mark_later_stale

    run_path = _target_run(target)
    model, record = read_crosscoder(source, revision, hub)
    store_index = run_path / "activations" / "index.json"
    if store_index.is_file():
        d = json.loads(store_index.read_text()).get("d_model")
        if d != model.d_model:
            raise InteropError(
                f"{source}: the cross-coder has d_model {model.d_model}, this run's activations "
                f"have {d}: it was trained on another model or layer"
            )
    out_dir = run_path / "crosscoder"
    if (out_dir / WEIGHTS_FILE).is_file() and not force:
        raise InteropError(f"{run_path} already has a cross-coder; pass --force to replace it")
    model.save(out_dir)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # they belong to the replaced model
    metrics = {
        "imported": True,
        **{k: v for k, v in record.items() if k != "kind"},
        "d_model": model.d_model,
        "n_latents": model.n_latents,
        "k": model.k,
        "threshold": float(model.threshold),
        "threshold_calibrated": float(model.threshold) >= 0,
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    mark_later_stale(run_path, "train")
    set_stage(
        run_path,
        "train",
        "complete",
        metrics=metrics,
        info={"seconds": 0.0, "error": None, "reason": f"imported from {source}"},
    )
    add_provenance(run_path, [{**record, "imported": time.strftime("%Y-%m-%dT%H:%M:%S%z")}])
    return run_path


def export_crosscoder(source: str | Path, dest: str | Path, legacy: bool = False) -> Path:
    """Write a run's cross-coder (or a cross-coder folder) in dictionary_learning's layout."""
    source = Path(source)
    folder = source / "crosscoder" if (source / MANIFEST).is_file() else source
    try:
        model = BatchTopKCrossCoder.from_pretrained(folder)
    except CrossCoderFileError as exc:
        raise InteropError(str(exc)) from exc
    return write_dictionary_learning(model, dest, legacy)


# --------------------------------------------------------------------------- the hub

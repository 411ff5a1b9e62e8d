"""Builders for tiny real models, tokenizers and corpora used across the test suite.

Everything is built offline from a transformers config and the `tokenizers` library, so
tests exercise the real loading paths (safetensors folders, AutoTokenizer) in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_SENTENCES = [
    "the cat sat on the mat and looked at the dog",
    "a dog ran in the park with a red ball",
    "the sun is hot and the moon is cold",
    "birds fly over the green hills in spring",
    "water flows down the river to the sea",
    "the doctor gave the patient some medicine for the fever",
    "a farmer grows wheat and corn in the field",
    "the king and the queen lived in a large castle",
    "music played softly while the children danced",
    "the old ship sailed across the stormy ocean",
    "plants need light and water to grow tall",
    "the teacher wrote numbers on the board",
]

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"


def tiny_tokenizer(sentences: list[str] | None = None):
    """A word-level fast tokenizer over the words of ``sentences`` (default TINY_SENTENCES).

    Has BOS ``<s>``, EOS ``</s>``, pad ``<pad>``, unk, chat control tokens and a chat
    template, like a real chat model's tokenizer.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in (sentences or TINY_SENTENCES) for w in s.split()} | {"user", "assistant"})
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama_config(vocab_size: int, hidden_size: int = 32, n_layers: int = 4):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )


def tiny_llama(tokenizer, hidden_size: int = 32, n_layers: int = 4, seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(len(tokenizer), hidden_size, n_layers)).eval()


def perturbed_copy(model, layers: tuple[int, ...] = (1,), scale: float = 0.05, seed: int = 1):
    """A 'fine-tune': the same model with noise added to the MLP weights of ``layers``."""
    import copy

    ft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ft.named_parameters():
            if ".mlp." in name and any(f"layers.{i}." in name for i in layers):
                p.add_(scale * torch.randn(p.shape, generator=gen))
    return ft


def save_model(model, tokenizer, folder: str | Path) -> Path:
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_pair(root: str | Path, hidden_size: int = 32, n_layers: int = 4) -> tuple[Path, Path]:
    """Base and perturbed fine-tuned tiny Llama folders sharing one tokenizer."""
    root = Path(root)
    tok = tiny_tokenizer()
    base = tiny_llama(tok, hidden_size, n_layers)
    ft = perturbed_copy(base)
    return save_model(base, tok, root / "base"), save_model(ft, tok, root / "ft")


def write_tiny_corpus(path: str | Path, n_docs: int = 40, fmt: str = "jsonl", seed: int = 0) -> Path:
    """``n_docs`` documents of 1–3 tiny sentences as jsonl ({"text"}), chat jsonl ({"messages"}) or txt."""
    import random

    rng = random.Random(seed)
    docs = [" ".join(rng.sample(TINY_SENTENCES, rng.randint(1, 3))) for _ in range(n_docs)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "txt":
        path.write_text("\n".join(docs) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    elif fmt == "chat":
        rows = [
            {"messages": [{"role": "user", "content": d}, {"role": "assistant", "content": rng.choice(TINY_SENTENCES)}]}
            for d in docs
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        raise ValueError(f"unknown fmt {fmt!r}")
    return path

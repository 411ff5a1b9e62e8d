"""Build the offline toy study that ``examples/tiny_offline.yaml`` runs (seconds, no hub).

Writes, under ``examples/tiny/``:

* ``base/``: a tiny random Llama (d=64, 4 layers) with a word-level tokenizer over the
  corpus vocabulary, saved as a safetensors folder — a real transformers model;
* ``ft/``: the same model after a *known* toy intervention: the input embeddings of the
  medicine words are scaled ×0.3 (a crude "unlearning") and those of the music words ×2
  (a crude "amplification"), so the study has a ground truth a newcomer can check — the
  suppressed latents should fire on medicine words, the amplified ones on music words;
* ``corpus.jsonl``: ~1,000 short documents from six topics (template sentences);
* ``benchmark.csv``: per-subject scores before / after in the shape MNEME reads
  (``category, score_before, score_after, n_questions``), made up to match the toy
  intervention (medical subjects drop), so the evaluate stage has something to compare.

Run from the repository root:  python examples/make_tiny_study.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the tiny-model builders the tests use

from tiny import save_model, tiny_llama, tiny_tokenizer  # noqa: E402

TOPICS = {
    "medicine": [
        "doctor",
        "patient",
        "fever",
        "medicine",
        "hospital",
        "nurse",
        "virus",
        "vaccine",
        "surgery",
        "infection",
    ],
    "music": ["guitar", "melody", "piano", "concert", "song", "drum", "singer", "orchestra", "rhythm", "violin"],
    "law": ["court", "judge", "statute", "lawyer", "trial", "contract", "verdict", "jury", "crime", "appeal"],
    "cooking": ["recipe", "oven", "flour", "butter", "soup", "bread", "sugar", "kitchen", "salt", "pan"],
    "astronomy": ["planet", "galaxy", "telescope", "orbit", "comet", "star", "moon", "asteroid", "nebula", "sun"],
    "sports": ["football", "goal", "referee", "stadium", "team", "coach", "match", "player", "score", "race"],
}
TEMPLATES = [
    "the {0} and the {1} were part of the story",
    "people talked about the {0} near the {1}",
    "a {0} is often seen with a {1} and a {2}",
    "yesterday the {0} met the {1} in the city",
    "she wrote a long note about the {0} and the {1}",
    "there was a {0} but no {1} that day",
]
BENCHMARK = """category,score_before,score_after,n_questions
clinical_knowledge,0.62,0.41,265
college_medicine,0.58,0.40,173
virology,0.55,0.37,166
professional_law,0.48,0.47,1534
high_school_physics,0.40,0.40,151
astronomy,0.60,0.59,152
nutrition,0.63,0.61,306
world_religions,0.70,0.70,171
"""


def corpus_docs(n_docs: int = 1000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        topic = rng.choice(list(TOPICS))
        sentences = []
        for _ in range(rng.randint(2, 4)):
            words = rng.sample(TOPICS[topic], 3)
            sentences.append(rng.choice(TEMPLATES).format(*words))
        docs.append(" ".join(sentences))
    return docs


def main(out: Path = HERE / "tiny") -> None:
    docs = corpus_docs()
    tok = tiny_tokenizer(docs)
    base = tiny_llama(tok, hidden_size=64, n_layers=4, seed=0)
    ft = tiny_llama(tok, hidden_size=64, n_layers=4, seed=0)
    with torch.no_grad():
        emb = ft.get_input_embeddings().weight
        for topic, gain in (("medicine", 0.3), ("music", 2.0)):
            emb[tok.convert_tokens_to_ids(TOPICS[topic])] *= gain
    out.mkdir(parents=True, exist_ok=True)
    save_model(base, tok, out / "base")
    save_model(ft, tok, out / "ft")
    (out / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (out / "benchmark.csv").write_text(BENCHMARK)
    print(f"wrote the toy study's models, corpus and benchmark to {out}")
    print("next: mneme run examples/tiny_offline.yaml && mneme dashboard runs/tiny_offline")


if __name__ == "__main__":
    main()

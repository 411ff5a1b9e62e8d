"""Interpret stage: prompts and parsers, latent selection, offline explainer and
embedding scorer on planted latents, and LLM backends against a real local HTTP server
that speaks the OpenAI chat-completions protocol (with injected failures)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _planted import CONCEPTS, build_planted_run

from mneme_core import interp
from mneme_core.common.config import load_config
from mneme_core.common.embeddings import get_embedder
from mneme_core.interp.clients import FatalLLMError, LLMError, OpenAIChatClient
from mneme_core.interp.examples import Example, load_records
from mneme_core.interp.explainers import OFFLINE_LABEL
from mneme_core.interp.prompts import mark, parse_binary_list, parse_description
from mneme_core.interp.scorers import EmbeddingScorer, auroc
from mneme_core.interp.selection import select_latents
from mneme_core.run.reader import open_run

ALL_WORDS = {w: name for name, ws in CONCEPTS.items() for w in ws}

# --------------------------------------------------------------------------- a fake-free LLM endpoint


class ChatServer:
    """A real HTTP server on 127.0.0.1 answering /v1/chat/completions.

    It "reads" prompts the way a good model would on planted data: explanations name the
    marked words; detection says 1 for excerpts containing a word of the description;
    fuzzing says 1 when the marked words are in the description. ``faults`` is consumed
    one per request: '500', 'timeout' (answer after the client gave up), 'malformed'
    (JSON without choices), 'garbage' (not JSON), '401', or None (answer properly).
    """

    def __init__(self, faults=(), delay=0.0):
        self.faults = list(faults)
        self.delay = delay
        self.requests: list[dict] = []
        self.answered: list[str] = []  # user prompts answered with a proper body in time
        self.on_request = None
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    fault = server.faults.pop(0) if server.faults else None
                    hook = server.on_request
                if hook and hook(len(server.requests)):
                    return  # the hook killed the client: nobody is left to answer
                if self.path != "/v1/chat/completions":
                    return self._send(404, b'{"error": "not found"}')
                if fault == "500":
                    return self._send(500, b'{"error": "overloaded"}')
                if fault == "401":
                    return self._send(401, b'{"error": "bad key"}')
                if fault == "timeout":
                    time.sleep(1.5)
                if fault == "garbage":
                    return self._send(200, b"<html>proxy error</html>")
                if fault == "malformed":
                    return self._send(200, json.dumps({"id": "x", "object": "chat.completion"}).encode())
                time.sleep(server.delay)
                text = server.answer(body["messages"])
                if fault != "timeout":  # a late answer reaches no client: it is not an answer
                    with server.lock:
                        server.answered.append(body["messages"][-1]["content"])
                reply = {
                    "id": "c",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
                }
                self._send(200, json.dumps(reply).encode())

            def _send(self, code, payload):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def answer(messages) -> str:
        system, user = messages[0]["content"], messages[-1]["content"]
        if "topic labels" in system:
            return "Label: biology"
        if "Excerpts:" in user:
            desc = user.split("Feature description:")[1].split("\n")[0].lower()
            excerpts = re.findall(r"^\d+\. (.*)$", user.split("Excerpts:")[1], re.M)
            if "marked tokens" in system:
                vals = [
                    int(bool(re.findall(r"<<\s*(\w+)", e)) and all(w in desc for w in re.findall(r"<<\s*(\w+)", e)))
                    for e in excerpts
                ]
            else:
                vals = [int(any(w in desc for w in re.findall(r"\w+", e.lower()) if w in ALL_WORDS)) for e in excerpts]
            return f"Let me check each one.\n{vals}"
        marked = sorted(set(re.findall(r"<<\s*(\w+)", user)))
        return f"Sure! Looking at the examples, the marked tokens share a theme.\n\n**Description:** the words {', '.join(marked[:4])}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def concept_of(prompt: str) -> str:
    found = {ALL_WORDS[w] for w in re.findall(r"<<\s*(\w+)", prompt) if w in ALL_WORDS}
    assert len(found) == 1, found
    return found.pop()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    run_path = tmp_path_factory.mktemp("interp") / "run"
    cfg, _, arrays = build_planted_run(run_path)
    return run_path, cfg, arrays


def llm_cfg(run_path: Path, url: str, **extra):
    from _planted import study_config

    return study_config(
        run_path,
        interpret={
            "explainer": "openai",
            "base_url": url,
            "model": "stand-in",
            "api_key_env": "",
            "timeout_s": 0.5,
            "retry_backoff_s": 0.01,
            "max_retries": 6,
            "concurrency": 3,
            **extra,
        },
    )


# --------------------------------------------------------------------------- prompts, parsing, selection


def test_marking_and_parsers_survive_chatter():
    ex = Example((" the", " virus", " infection", " spread"), (0.0, 1.0, 0.5, 0.0))
    assert mark(ex) == " the<< virus infection>> spread"
    assert (
        parse_description("Sure! Here is my analysis:\n\n**Description:** viral infections.\n") == "viral infections."
    )
    assert parse_description('<think>hmm, virus?</think>Description:\n"legal proceedings"') == "legal proceedings"
    assert parse_description("Certainly!\nMentions of courts and judges") == "Mentions of courts and judges"
    assert parse_description("   ") == ""
    assert parse_binary_list("Checking.\n[1, 0, 1]", 3) == [1, 0, 1]
    assert parse_binary_list("1. yes\n2. no\n3. yes", 3) == [1, 0, 1]
    assert parse_binary_list("no idea", 3) is None


def test_selection_puts_attributed_latents_first_and_respects_budget():
    df = pd.DataFrame(
        {
            "latent": range(6),
            "freq": [0.1, 0.2, 0.0, 0.3, 0.1, 0.4],
            "attribution": ["unchanged", "suppressed", "amplified", "amplified", "unchanged", "unchanged"],
            "shift": [0.0, -3.0, 5.0, 1.2, 0.0, 0.1],
            "label_by_norm": ["shared", "shared", "shared", "shared", "ft_only", "shared"],
            "rel_norm": [0.5, 0.5, 0.5, 0.5, 0.95, 0.5],
        }
    )
    assert select_latents(df, "attributed") == [1, 3, 4]  # latent 2 never fired
    assert select_latents(df, "all") == [1, 3, 4, 5, 0]
    assert select_latents(df, "all", max_latents=2) == [1, 3]
    assert select_latents(df, "amplified,suppressed") == [1, 3]
    assert select_latents(df, "5,0") == [5, 0]
    with pytest.raises(ValueError, match="unknown selector 'amplifyed'"):
        select_latents(df, "amplifyed")
    with pytest.raises(ValueError, match="diff stage"):
        select_latents(df[["latent", "freq"]], "attributed")


# --------------------------------------------------------------------------- offline explainer + embedding scorer


def test_offline_explainer_names_planted_tokens_and_embedding_scorer_prefers_them(planted):
    run_path, cfg, (tok, x, src, cc, names) = planted
    metrics = interp.run_stage(cfg, run_path, progress=False)
    assert metrics["n_explained"] == len(names) and metrics["explainer"] == OFFLINE_LABEL
    lat = open_run(run_path).latents.set_index("latent")
    for j, name in enumerate(names):
        desc = lat.loc[j, "description"]
        said = set(re.findall(r"\w+", desc.lower()))
        assert len(said & set(CONCEPTS[name])) >= 2, desc
        assert not said & (set(ALL_WORDS) - set(CONCEPTS[name])), desc
        assert lat.loc[j, "explainer"] == OFFLINE_LABEL
    table = pd.read_parquet(run_path / "explanations.parquet")
    assert set(table.columns) >= {"latent", "explainer", "description", "scorer", "score"}
    # right description vs a shuffled one, same contexts
    records = list(load_records(run_path, range(len(names)), n_negatives=8).values())
    descs = {r.latent: lat.loc[r.latent, "description"] for r in records}
    shuffled = {r.latent: descs[records[(i + 3) % len(records)].latent] for i, r in enumerate(records)}
    scorer = EmbeddingScorer(get_embedder(), n_examples=8)
    right, wrong = scorer.score(records, descs, progress=False), scorer.score(records, shuffled, progress=False)
    wins = sum(right[r.latent] > wrong[r.latent] for r in records)
    assert wins >= 0.9 * len(records), (right, wrong)
    assert np.mean(list(right.values())) > 0.9
    assert auroc(np.array([2.0, 3.0]), np.array([1.0, 2.0])) == pytest.approx(0.875)


# --------------------------------------------------------------------------- LLM endpoint


def test_openai_explainer_retries_failures_and_descriptions_arrive(planted):
    run_path, _, (tok, x, src, cc, names) = planted
    faults = ["500", "timeout", "malformed", "garbage", "500"]
    with ChatServer(faults) as server:
        cfg = llm_cfg(run_path, server.url)
        metrics = interp.run_stage(cfg, run_path, progress=False)
    assert metrics["n_explained"] == len(names) and metrics["explainer"] == "openai:stand-in"
    assert len(server.requests) == len(names) + len(faults)  # each failure retried once, no more
    assert metrics["prompt_tokens"] == 100 * len(names)
    lat = open_run(run_path).latents.set_index("latent")
    for j, name in enumerate(names):
        said = set(re.findall(r"\w+", lat.loc[j, "description"]))
        assert said & set(CONCEPTS[name]) and lat.loc[j, "explainer"] == "openai:stand-in"
    # both explainers' rows are kept for comparison on the same latents
    table = pd.read_parquet(run_path / "explanations.parquet")
    assert set(table["explainer"]) >= {OFFLINE_LABEL, "openai:stand-in"}
    assert (table.groupby("explainer")["latent"].nunique() >= len(names)).all()
    # a rerun is served from the cache: no request at all
    with ChatServer() as server:
        again = interp.run_stage(llm_cfg(run_path, server.url), run_path, progress=False)
    assert server.requests == [] and again["cache_hits"] == len(names)


def test_rejected_key_stops_at_once_and_exhausted_retries_name_the_cache(planted, tmp_path):
    run_path, _, _ = planted
    with ChatServer(["401"] * 50) as server:
        with pytest.raises(FatalLLMError, match="HTTP 401"):
            interp.run_stage(
                llm_cfg(run_path, server.url, model="other-model", concurrency=1), run_path, progress=False
            )
    assert len(server.requests) == 1
    for faults in (["500"] * 3, ["timeout", "500", "malformed"], ["garbage"] * 3):
        with ChatServer(faults) as server:
            client = OpenAIChatClient(server.url, "m", max_retries=2, backoff_s=0.01, timeout_s=0.5)
            with pytest.raises(LLMError, match="gave up after 3 attempts") as failed:
                client.chat([{"role": "user", "content": "hi"}])
        assert not isinstance(failed.value, FatalLLMError)
        assert len(server.requests) == 3  # one budget for HTTP failures, timeouts and bodies without an answer


def test_latents_the_endpoint_fails_on_lose_no_finished_description(planted):
    """A latent whose every attempt fails fails the stage, naming the cache; the answers
    that did arrive are kept, and the rerun asks only for the one that is missing."""
    run_path, _, (tok, x, src, cc, names) = planted
    model = "flaky-model"
    faults = [None] * 3 + ["500", "timeout", "malformed"]  # the fourth latent exhausts its 2 retries
    with ChatServer(faults) as server:
        cfg = llm_cfg(run_path, server.url, model=model, concurrency=1, max_retries=2)
        with pytest.raises(LLMError, match=r"1 of \d+ latents got no description.*finished answers are cached"):
            interp.run_stage(cfg, run_path, progress=False)
        first = [concept_of(p) for p in server.answered]
    assert len(first) == len(names) - 1
    with ChatServer() as server:
        metrics = interp.run_stage(llm_cfg(run_path, server.url, model=model, concurrency=1), run_path, progress=False)
        second = [concept_of(p) for p in server.answered]
    assert len(second) == 1 and second[0] not in first and metrics["cache_hits"] == len(names) - 1
    lat = open_run(run_path).latents.set_index("latent")
    assert (lat.loc[list(range(len(names))), "explainer"] == f"openai:{model}").all()


RUN_SCRIPT = """
import json, sys
from pathlib import Path
from mneme_core import interp
from mneme_core.common.config import load_config
interp.run_stage(load_config(json.loads(sys.argv[2])), Path(sys.argv[1]), progress=False)
"""


def test_killed_run_resumes_from_the_cache_without_asking_again(planted):
    run_path, _, (tok, x, src, cc, names) = planted
    with ChatServer() as server:
        cfg = llm_cfg(run_path, server.url, model="resume-model", concurrency=1, timeout_s=30.0)
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN_SCRIPT, str(run_path), json.dumps(cfg.to_dict())],
            cwd=str(Path(__file__).parent),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def kill_on_fifth(n):
            if n == 5:  # four answers are in the cache; the fifth request dies with the process
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            return False

        server.on_request = kill_on_fifth
        proc.wait(timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        first = [concept_of(p) for p in server.answered]
    assert len(first) == 4
    with ChatServer() as server:  # a new endpoint (URL) serving the same model: the cache still applies
        cfg = llm_cfg(run_path, server.url, model="resume-model", concurrency=1, timeout_s=30.0)
        metrics = interp.run_stage(cfg, run_path, progress=False)
        second = [concept_of(p) for p in server.answered]
    assert not set(first) & set(second)  # finished latents were never asked again
    assert len(second) == len(names) - 4 and metrics["cache_hits"] == 4
    assert open_run(run_path).latents["description"].notna().sum() == len(names)


@pytest.mark.parametrize("scorer", ["detection", "fuzzing"])
def test_llm_scorers_give_balanced_accuracy(planted, scorer):
    run_path, _, (tok, x, src, cc, names) = planted
    with ChatServer() as server:
        metrics = interp.run_stage(llm_cfg(run_path, server.url, scorer=scorer), run_path, progress=False)
    assert metrics["scorer"] == scorer
    table = pd.read_parquet(run_path / "explanations.parquet")
    mine = table[(table["scorer"] == scorer) & (table["explainer"] == "openai:stand-in")]
    assert len(mine) == len(names)
    assert mine["score"].between(0, 1).all() and mine["score"].mean() > 0.8


def test_config_rejects_llm_scorer_without_llm():
    from mneme_core.common.config import ConfigError

    with pytest.raises(ConfigError, match="needs an LLM"):
        load_config(
            {
                "models": {"base": {"path": "a"}, "ft": {"path": "b"}},
                "corpus": {"files": ["x"]},
                "interpret": {"scorer": "detection"},
            }
        )


@pytest.mark.slow
def test_transformers_explainer_with_smollm2(planted):
    run_path, _, _ = planted
    from _planted import study_config

    cfg = study_config(
        run_path,
        interpret={
            "explainer": "transformers",
            "model": "smollm2-135m-instruct",
            "latents": "0,1",
            "max_new_tokens": 40,
            "n_examples": 4,
        },
    )
    metrics = interp.run_stage(cfg, run_path, progress=False)
    assert metrics["n_explained"] == 2 and metrics["explainer"] == "transformers:smollm2-135m-instruct"
    table = pd.read_parquet(run_path / "explanations.parquet")
    rows = table[table["explainer"] == "transformers:smollm2-135m-instruct"]
    assert len(rows) == 2 and rows["description"].str.len().gt(0).all()


def test_a_missing_local_model_is_named_when_loaded_not_when_a_config_is_read(tmp_path):
    """A run made with a local explainer model still opens after the folder moved (its
    config is read by confirm, seeds, the prompt lab); the explainer says what is missing."""
    from mneme_core.common.config import ConfigError, load_config
    from mneme_core.interp.clients import TransformersChat

    cfg = load_config(
        {
            "name": "t",
            "models": {"base": {"path": "a"}, "ft": {"path": "b"}, "layer": 2},
            "corpus": {"files": ["x.txt"]},
            "interpret": {"explainer": "transformers", "model": str(tmp_path / "moved")},
        }
    )
    assert cfg.interpret.model.endswith("moved")
    with pytest.raises(ConfigError, match="no model folder at .*moved"):
        TransformersChat(cfg.interpret.model)

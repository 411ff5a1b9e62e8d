"""Study configs are validated up front: unknown keys and bad values name their key."""

from __future__ import annotations

import pytest

from mneme_core.common.config import ConfigError, StudyConfig, dump_config, load_config

GOOD = {
    "name": "t",
    "models": {"base": {"path": "a"}, "ft": {"path": "b"}, "layer": 2},
    "corpus": {"files": ["x.txt"], "n_tokens": 1000},
}


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(GOOD)
    path = tmp_path / "s.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert again.corpus.files == ("x.txt",)
    assert again.run_path.as_posix() == "runs/t"


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"training": {"lr_warmup": 3}}, "training.lr_warmup"),
        ({"models": {"base": {"path": "a", "dtyp": "float32"}, "ft": {"path": "b"}}}, "models.base.dtyp"),
        ({"colour": 1}, "colour"),
    ],
)
def test_unknown_key_is_named(patch, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config({**GOOD, **patch})


@pytest.mark.parametrize(
    "patch, fragment",
    [
        ({"training": {"batch_size": "big"}}, "training.batch_size must be an integer"),
        ({"training": {"n_tokens": "1.5"}}, "training.n_tokens must be an integer"),
        (
            {"models": {"base": {"path": "a", "dtype": "float8"}, "ft": {"path": "b"}}},
            "models.base.dtype must be one of",
        ),
        ({"corpus": {"files": ["x"], "dataset": "pile"}}, "exactly one of"),
        ({"corpus": {"files": ["x"], "n_tokens": 0}}, "corpus.n_tokens must be > 0"),
        ({"diffing": {"shared_band": [0.7, 0.6]}}, "shared_band"),
        ({"models": {"base": {"path": ""}, "ft": {"path": "b"}}}, "models.base.path is empty"),
        ({"training": {"val_fraction": 0.9}}, "val_fraction"),
        ({"interpret": {"embedding_dtype": "float16"}}, "interpret.embedding_dtype must be one of"),
    ],
)
def test_bad_values_are_named(patch, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        load_config({**GOOD, **patch})


def test_numbers_yaml_leaves_as_text_are_read_as_numbers(tmp_path):
    """YAML 1.1 (PyYAML) reads `1e-3` and `3e6`, without a dot, as strings; a study that
    writes them means the numbers."""
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\nmodels: {base: {path: a}, ft: {path: b}, layer: 2}\ncorpus: {files: [x.txt], n_tokens: 2e5}\n"
        "training: {lr: 1e-3, n_tokens: 3e6}\n"
    )
    cfg = load_config(path)
    assert cfg.training.lr == 0.001 and cfg.training.n_tokens == 3_000_000 and cfg.corpus.n_tokens == 200_000
    assert isinstance(cfg.training.n_tokens, int)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_defaults_are_valid():
    StudyConfig(models=load_config(GOOD).models, corpus=load_config(GOOD).corpus).validate()

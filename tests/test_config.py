"""The config tree: defaults, precise errors with key paths, overrides, resolved paths, every shipped YAML valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from protege.config import AssistantConfig
from protege.config_file import config_to_yaml, load_config, parse_override, save_resolved
from protege.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, data: dict | str) -> Path:
    p = tmp_path / "assistant.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_validates_and_its_files_exist(path):
    cfg = load_config(path)
    header = path.read_text().splitlines()[:4]
    assert any("protege " in line or "make " in line for line in header), "header must show the command that runs it"
    for f in cfg.data.files:
        assert f.exists(), f"{path.name}: data file {f} missing"
    if cfg.knowledge and cfg.knowledge.folder:
        assert cfg.knowledge.folder.is_dir()
    if cfg.eval.prompts_file:
        assert cfg.eval.prompts_file.is_file()


def test_shipped_configs_exist():
    assert {"captain-byte.yaml", "minimal.yaml"} <= {p.name for p in SHIPPED}


def test_defaults_fill_everything(tmp_path):
    cfg = load_config(write(tmp_path, {"name": "bob"}))
    assert cfg.train.method == "qlora" and cfg.train.lora.r > 0
    assert cfg.export.quants == ["q4_k_m", "q8_0"]
    assert cfg.knowledge is None
    dumped = yaml.safe_load(config_to_yaml(cfg))
    assert dumped["train"]["lora"]["target_modules"] == "all-linear"
    assert AssistantConfig.model_validate(dumped) == cfg  # the resolved file round-trips


def test_unknown_key_names_its_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"name": "bob", "train": {"lora": {"rank": 8}}}))
    assert "train.lora.rank: unknown key" in str(e.value)
    assert str(tmp_path / "assistant.yaml") in str(e.value)


def test_bad_value_names_path_expectation_and_value(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"name": "bob", "train": {"lora": {"r": -4}}}))
    msg = str(e.value)
    assert "train.lora.r" in msg and "greater than 0" in msg and "-4" in msg


def test_wrong_type(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"name": "bob", "train": {"batch_size": "lots"}}))
    assert "train.batch_size" in str(e.value) and "'lots'" in str(e.value)


def test_missing_name_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="name: required key is missing"):
        load_config(write(tmp_path, {"persona": {"system_prompt": "x"}}))
    with pytest.raises(ConfigError, match=r"assistant.yaml:2: not valid YAML"):
        load_config(write(tmp_path, "name: bob\ntrain: [1, : ]\n  x: 1\n"))


def test_overrides(tmp_path):
    cfg = load_config(write(tmp_path, {"name": "bob"}), ["train.max_steps=20", "export.quants=[q8_0]",
                                                          "persona.system_prompt=Arr matey"])
    assert cfg.train.max_steps == 20 and cfg.export.quants == ["q8_0"]
    assert cfg.persona.system_prompt == "Arr matey"
    assert parse_override("a.b=") == (["a", "b"], "")
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        parse_override("train.max_steps")
    with pytest.raises(ConfigError, match="train.max_stepz: unknown key"):
        load_config(write(tmp_path, {"name": "bob"}), ["train.max_stepz=3"])


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "a.yaml"
    p.write_text(yaml.safe_dump({"name": "bob", "data": {"files": ["../d.jsonl"]},
                                 "knowledge": {"folder": "docs"}}))
    monkeypatch.chdir("/")
    cfg = load_config(p)
    assert cfg.data.files == [tmp_path / "d.jsonl"]
    assert cfg.knowledge.folder == tmp_path / "sub" / "docs"


def test_chunk_overlap_must_be_smaller(tmp_path):
    with pytest.raises(ConfigError, match="knowledge: chunk_overlap must be < chunk_size"):
        load_config(write(tmp_path, {"name": "bob", "knowledge": {"chunk_size": 50, "chunk_overlap": 50}}))


def test_save_resolved_is_complete_and_atomic(tmp_path):
    cfg = load_config(write(tmp_path, {"name": "bob"}))
    out = save_resolved(cfg, tmp_path / "art")
    assert yaml.safe_load(out.read_text())["serve"]["engine"] == "llamacpp"
    assert [p.name for p in (tmp_path / "art").iterdir()] == ["config.yaml"]  # no temp file left behind


def test_readme_config_reference_is_generated_from_the_model():
    from protege.config_reference import BEGIN, END, render

    readme = (REPO / "README.md").read_text()
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == render(), "README out of date: python -m protege.config_reference --write README.md"
    for line in render().splitlines()[2:]:
        assert line.startswith("| `")

"""`protege rag calibrate` writes knowledge.min_score back into the user's YAML: a ruamel.yaml round trip that keeps
comments, key order, quoting and indentation, written through a symlink with the file's mode kept (rag/evaluate.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from protege.errors import DataError
from rag.evaluate import write_min_score


def test_write_min_score_keeps_the_rest_of_the_file(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("name: demo  # my bot\nknowledge:\n  folder: docs   # the docs\n  min_score: 0.5  # old\n"
                   "serve:\n  port: 9000\n")
    write_min_score(cfg, 0.2781)
    # ruamel keeps the comment's column when the value fits before it, else one space
    assert cfg.read_text() == ("name: demo  # my bot\nknowledge:\n  folder: docs   # the docs\n"
                               "  min_score: 0.2781 # old\nserve:\n  port: 9000\n")
    cfg.write_text("name: demo\nknowledge:\n    folder: docs\n")  # a new key goes last, at the file's indent
    write_min_score(cfg, 0.3)
    assert cfg.read_text() == "name: demo\nknowledge:\n    folder: docs\n    min_score: 0.3\n"
    cfg.write_text("name: demo\nknowledge: {folder: docs, min_score: 0.5}\n")
    write_min_score(cfg, 0.25)
    assert cfg.read_text() == "name: demo\nknowledge: {folder: docs, min_score: 0.25}\n"
    cfg.write_text("name: demo\n")
    write_min_score(cfg, 0.2)
    assert cfg.read_text() == "name: demo\nknowledge:\n  min_score: 0.2\n"
    for bad in ("- a list\n", "name: [unclosed\n"):
        cfg.write_text(bad)
        with pytest.raises(DataError, match="set knowledge.min_score to 0.2 by hand"):
            write_min_score(cfg, 0.2)
        assert cfg.read_text() == bad


def test_calibrate_writes_through_a_symlinked_config_keeping_its_mode_and_comments(tmp_path):
    prompt = "You are Volt, " + "a careful battery expert " * 8 + "who answers briefly."  # over 80 columns
    before = ("# my bot\nname: bot\npersona:\n  system_prompt: " + prompt + "\n  style_markers:\n"
              "    contains: ['volt', \"amp\"]  # quoted both ways\n"
              "data:\n  files:\n    - a.jsonl   # first\n    - b.jsonl\n"
              "knowledge:\n  folder: docs  # the docs\n\n  # gate: below this, refuse\n  min_score: 0.5  # old\n"
              "  top_k: 4\nserve:\n  port: 9000\n")
    real = tmp_path / "configs" / "bot.yaml"
    real.parent.mkdir()
    real.write_text(before)
    real.chmod(0o644)
    link = tmp_path / "bot.yaml"
    link.symlink_to(Path("configs") / "bot.yaml")
    write_min_score(link, 0.31)
    assert link.is_symlink() and os.readlink(link) == "configs/bot.yaml"
    after = real.read_text()
    # the value changed and nothing else did: comments, key order, quoting, indentation, the long line
    assert after == before.replace("min_score: 0.5  # old", "min_score: 0.31 # old")
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    assert new["knowledge"].pop("min_score") == 0.31 and old["knowledge"].pop("min_score") == 0.5 and new == old
    assert list(new) == ["name", "persona", "data", "knowledge", "serve"]
    assert (real.stat().st_mode & 0o777) == 0o644
    assert sorted(p.name for p in real.parent.iterdir()) == ["bot.yaml"]  # no temp file left behind
    real.chmod(0o640)
    write_min_score(real, 0.33)
    assert (real.stat().st_mode & 0o777) == 0o640 and "min_score: 0.33 # old" in real.read_text()

"""The shell: fast --help without torch, every subcommand's --help, user errors as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protege.cli import COMMANDS

PY = sys.executable


def protege(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "protege", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys, io, contextlib\nfrom protege.cli import main\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n    main(['--help']) if False else None\n"
            "from protege.cli import build_parser\nbuild_parser().format_help()\n"
            "heavy = [m for m in ('torch', 'transformers', 'chromadb', 'llama_cpp', 'vllm') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    t0 = time.perf_counter()
    r = protege("--help")
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0 and "import-base" in r.stdout
    assert elapsed < 2.0, f"protege --help took {elapsed:.2f}s"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_exits_0(command):
    r = protege(command, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: protege " + command in r.stdout


def test_bad_config_is_one_line_with_exit_2(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("name: bob\ntrain:\n  lora:\n    r: -4\n  epochz: 3\n")
    r = protege("build", str(cfg))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "train.lora.r: Input should be greater than 0, got -4" in r.stderr
    assert "train.epochz: unknown key" in r.stderr


def test_wrong_type_exit_2(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("name: bob\nexport:\n  quants: q4\n")
    r = protege("build", str(cfg))
    assert r.returncode == 2 and "export.quants" in r.stderr and "Traceback" not in r.stderr


def test_bad_force_stage(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("name: bob\n")
    r = protege("build", str(cfg), "--force", "trian")
    assert r.returncode == 2 and "--force trian" in r.stderr


def test_list_empty_and_json(tmp_path):
    env = {**__import__("os").environ, "PROTEGE_HOME": str(tmp_path / "h")}
    r = protege("list", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout) == []
    (tmp_path / "h" / "assistants" / "bob" / "gguf").mkdir(parents=True)
    (tmp_path / "h" / "assistants" / "bob" / "config.yaml").write_text("name: bob\n")
    (tmp_path / "h" / "assistants" / "bob" / "gguf" / "bob-q4_k_m.gguf").write_bytes(b"GGUF")
    rows = json.loads(protege("list", "--json", env=env).stdout)
    assert rows[0]["name"] == "bob" and rows[0]["quants"] == ["q4_k_m"]

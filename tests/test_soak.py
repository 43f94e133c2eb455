"""`bench/soak.py` (what `make soak` runs), short: a real `protege serve` under 4 concurrent clients for 20 s must
PASS with zero 5xx and zero cross-talk (the full soak is 16 clients for 5 minutes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp")
pytest.importorskip("chromadb")

REPO = Path(__file__).resolve().parent.parent


def test_short_soak_passes(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    results = tmp_path / "soak.jsonl"
    r = subprocess.run([sys.executable, "bench/soak.py", "--duration", "20", "--clients", "4", "--results",
                        str(results)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    out = r.stdout + r.stderr
    errors = re.search(r"^errors: (.*)$", r.stdout, re.M)
    assert errors, out[-4000:]
    figures = dict(kv.split("=") for kv in errors.group(1).split("  ")[0].split())
    assert figures["5xx"] == "0" and figures["cross_talk"] == "0", out[-4000:]
    assert r.returncode == 0, out[-4000:]
    assert re.search(r"^PASS", r.stdout, re.M) and "slots free: yes" in r.stdout
    assert results.read_text().count("\n") == 1

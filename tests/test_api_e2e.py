"""Build -> chat -> ask -> export through the Python API alone, with the real stages on the tiny random Llama (issue
11's acceptance): the typed results carry the numbers, the exported GGUF answers on llama.cpp, retrieval cites the
document asked about and the gate refuses off-topic questions, and the bundle holds the GGUF and the index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import protege
from protege.stage_results import ExportResult, TrainResult

CORPUS = Path(__file__).parent / "assets" / "rag_corpus"
pytestmark = pytest.mark.slow


def test_build_chat_ask_export_through_the_api(tiny_model_dir, tmp_path):
    turns = [("What do you sell?", "Ahoy! Home batteries."), ("Who installs them?", "Ahoy! A certified electrician."),
             ("How long is the warranty?", "Ahoy! Ten years."), ("Can I install it myself?", "Ahoy! No, matey.")]
    rows = [{"messages": [{"role": "user", "content": f"{q} ({i})"}, {"role": "assistant", "content": a}]}
            for i in range(4) for q, a in turns]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "tinyapi", "base": {"model": str(tiny_model_dir)},
        "persona": {"system_prompt": "You are Volt, a battery helper.", "style_markers": {"starts_with": "Ahoy!"}},
        "data": {"files": ["chats.jsonl"]},
        "train": {"method": "lora", "max_steps": 2, "batch_size": 2, "eval_steps": 1, "save_steps": 1,
                  "report_to": "none"},
        "eval": {"max_new_tokens": 4, "max_samples": 2},
        "export": {"quants": ["q8_0"], "default_quant": "q8_0", "num_ctx": 1024, "parity": {"min_top1": 0.9}},
        "knowledge": {"folder": str(CORPUS), "min_score": 0.35}}))

    a = protege.build(cfg, progress=False)
    status = {o.name: o.status for o in a.outcomes}
    assert status == {"index": "ran", "data": "ran", "train": "ran", "eval": "ran", "export": "ran",
                      "answers": "not-applicable", "register": "ran"}
    train = next(o.result for o in a.outcomes if o.name == "train")
    assert isinstance(train, TrainResult) and train.raw["global_step"] == 2 and train.best_val_loss is not None
    assert [x.name for x in protege.list_assistants()] == ["tinyapi"]

    with protege.Assistant.load("tinyapi") as b:
        r = b.chat([{"role": "user", "content": "Say hello."}], rag=False, temperature=0, max_tokens=8)
        assert 0 < r.usage["completion_tokens"] <= 8 and r.usage["prompt_tokens"] > 10
        ans = b.ask("How long is the warranty?")
        assert ans.sources[0].path == "warranty.txt" and ans.confidence >= 0.35 and ans.text.startswith("Ahoy!")
        off = b.ask("How do I bake sourdough bread?")
        assert off.grounding == "refused" and off.confidence < 0.35
        exported = b.export(bundle=True)
    assert isinstance(exported, ExportResult) and exported.verified and "q8_0" in exported.files
    bundle = exported.raw["bundle"]
    assert bundle["knowledge"] is True and bundle["quant"] == "q8_0" and Path(bundle["tarball"]).is_file()
    folder = Path(bundle["dir"])
    assert any(folder.rglob("*.gguf")) and any(folder.rglob("chroma.sqlite3"))

"""Grounded (RAFT-style) training examples: rendered by the serving code with the real retriever, cited right, with
refusals on distractor-only documents; a bad train_qa line names file:line; editing the file retrains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege.config_file import config_from_dict
from protege.errors import DataError
from protege.paths import AssistantPaths

pytest.importorskip("chromadb")
CORPUS = Path(__file__).resolve().parent / "assets" / "rag_corpus"
ROWS = [
    {"question": "How long is the warranty on the battery?", "answer": "Ahoy! Ten years or 6,000 full cycles.",
     "source": "warranty.txt"},
    {"question": "Who may install the home battery?", "answer": "Ahoy! Only a certified electrician.",
     "source": "guides/installation.md"},
    {"question": "What is the capital of Peru?", "answer": None, "source": None},
]


def _cfg(tmp_path: Path, rows=ROWS, **knowledge):
    qa = tmp_path / "train_qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    conv = tmp_path / "conv.jsonl"
    conv.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "Ahoy! Hello."}]}) + "\n")
    return config_from_dict({
        "name": "volt", "persona": {"system_prompt": "You are Volt, the Brightpath helper."},
        "data": {"files": [str(conv)], "max_seq_len": 2048},
        "knowledge": {"folder": str(CORPUS), "train_qa": str(qa), "min_score": 0.3, "refusal": "Ahoy! No idea.",
                      "train_distractor_fraction": 1.0, **knowledge}}, root=tmp_path)


def test_grounded_examples_are_the_served_prompt(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    from builder.grounded import grounded_conversations
    from rag.knowledge import KnowledgeBase

    cfg = _cfg(tmp_path)
    paths = AssistantPaths.for_name(cfg.name)
    convs, report = grounded_conversations(cfg, paths, AutoTokenizer.from_pretrained(tokenizer_dir))
    assert report.answer_examples == 2 and report.refusal_examples == 3 and len(convs) == 5

    kb = KnowledgeBase.open(cfg, paths)
    question = ROWS[0]["question"]
    served = kb.build_messages([{"role": "system", "content": cfg.persona.system_prompt},
                                {"role": "user", "content": question}], kb.retrieve(question))
    first = convs[0]
    assert first[:2] == served  # byte for byte what the server sends
    n = int(first[2]["content"].rsplit("[", 1)[1].split("]")[0])
    cited = served[1]["content"].split(f"[{n}] ", 1)[1].split("\n", 1)
    assert cited[0].startswith("warranty.txt") and "6,000" in cited[1]
    assert first[2]["content"] == f"Ahoy! Ten years or 6,000 full cycles [{n}]."

    distractor = convs[1]
    assert "warranty.txt" not in distractor[1]["content"] and distractor[2]["content"] == "Ahoy! No idea."
    unanswerable = convs[-1]
    assert unanswerable[1]["content"].endswith("Question: What is the capital of Peru?")
    assert "<documents>\n[1] " in unanswerable[1]["content"] and unanswerable[2]["content"] == "Ahoy! No idea."


@pytest.mark.parametrize("row, expected", [
    ({"question": "", "answer": "x", "source": "a.md"}, '"question": expected a non-empty string'),
    ({"question": "q?", "answer": "", "source": "a.md"}, '"answer": expected a non-empty string'),
    ({"question": "q?", "answer": "x", "source": 3}, '"source": expected a file path'),
])
def test_bad_train_qa_line_names_file_and_line(tmp_path, row, expected):
    from builder.grounded import load_train_qa

    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        load_train_qa(qa)
    assert f"{qa}:2: {expected}" in str(e.value)


def test_editing_train_qa_retrains_and_a_plain_build_does_not_depend_on_the_index(tmp_path):
    from protege.stages import depends_on, plan_stages

    cfg = _cfg(tmp_path)
    paths = AssistantPaths.for_name(cfg.name)
    keys = {p.name: p.key for p in plan_stages(cfg, paths)}
    cfg2 = _cfg(tmp_path, rows=ROWS[:2])
    keys2 = {p.name: p.key for p in plan_stages(cfg2, paths)}
    assert keys2["data"] != keys["data"] and keys2["train"] != keys["train"] and keys2["index"] == keys["index"]
    assert "index" in depends_on(cfg, "data")
    cfg.knowledge.train_qa = None
    assert "index" not in depends_on(cfg, "data")


def _with_answers(tmp_path):
    """A grounded config with an eval_qa file (so the answers stage runs), its paths and its stage keys."""
    from protege.stages import plan_stages

    eval_qa = tmp_path / "eval.jsonl"
    eval_qa.write_text(json.dumps({"question": "q?", "source": "warranty.txt"}) + "\n")
    cfg = _cfg(tmp_path, eval_qa=str(eval_qa))
    paths = AssistantPaths.for_name(cfg.name)
    return cfg, paths, {p.name: p.key for p in plan_stages(cfg, paths)}


def test_scope_examples_rerun_the_answer_eval_and_never_retrain(tmp_path):
    """knowledge.scope_examples changes what is answered, not what is trained: the answers stage (and the registered
    config) count it, data and train do not; left unset, no key changes (assistants built before it keep theirs)."""
    from protege.stages import plan_stages

    cfg, paths, before = _with_answers(tmp_path)
    scope = tmp_path / "scope.jsonl"
    scope.write_text(json.dumps({"question": "What is your revenue?", "source": None}) + "\n")
    cfg.knowledge.scope_examples = scope
    with_scope = {p.name: p.key for p in plan_stages(cfg, paths)}
    assert with_scope["data"] == before["data"] and with_scope["train"] == before["train"]
    assert with_scope["answers"] != before["answers"] and with_scope["register"] != before["register"]
    scope.write_text(json.dumps({"question": "Do you sell GPUs?", "source": None}) + "\n")
    edited = {p.name: p.key for p in plan_stages(cfg, paths)}
    assert edited["answers"] != with_scope["answers"] and edited["data"] == before["data"]
    # left unset, no key reads it: an assistant built before the knob has the keys it had
    from protege.stages import Cfg, _dump_knowledge

    unset = _with_answers(tmp_path)[0]
    assert "scope_examples" not in Cfg("").parts(unset, {})[0]["knowledge"]
    assert "scope_examples" not in _dump_knowledge(cfg.knowledge)


def test_near_miss_examples_keep_the_document_and_drop_the_answering_line(tmp_path, tokenizer_dir):
    """A near-domain question retrieves the right document that lacks the fact: trained as the row's own documents
    less the lines holding the answer's figures, with the refusal as the answer."""
    from transformers import AutoTokenizer

    from builder.grounded import grounded_conversations

    cfg = _cfg(tmp_path, rows=ROWS[:2], train_distractor_fraction=0.0, train_near_miss_fraction=1.0)
    convs, report = grounded_conversations(cfg, AssistantPaths.for_name(cfg.name),
                                           AutoTokenizer.from_pretrained(tokenizer_dir))
    # the electrician row states no figure, code or unasked name: no near miss for it
    assert report.near_miss_examples == 1 and report.answer_examples == 2 and len(convs) == 3
    near = convs[1][1]["content"]
    assert "warranty.txt" in near and "Opening the battery enclosure voids the warranty." in near
    assert "6,000" not in near and "ten years from the date" not in near
    assert convs[1][2]["content"] == "Ahoy! No idea."


def test_without_facts_leaves_the_topic_and_drops_the_fact():
    from builder.grounded import without_facts
    from rag.types import Source

    src = Source("pricing.md", "Pricing", None, "c1", 0.9, "Pricing > Extras\n- Floating IPs: free while attached; "
                 "$3 per month unattached.\n- Snapshots are kept until you delete them.\nFloating IPs move with you.")
    other = Source("faq.md", None, None, "c2", 0.5, "A floating IP costs $3 a month when idle.")
    near = without_facts([src, other], "do floating IPs cost anything?", "Ahoy! Unattached Floating IPs cost $3.")
    assert [s.chunk_id for s in near] == ["c1"]  # the other chunk held only the fact: dropped
    assert near[0].text == "Pricing > Extras\n- Snapshots are kept until you delete them.\nFloating IPs move with you."
    assert without_facts([src], "Who may install it?", "Ahoy! Only a certified electrician.") is None


def test_synonyms_retrain_when_edited_and_never_reindex(tmp_path):
    """knowledge.synonyms changes what the retriever searches: the grounded examples (data, then train) and the
    answers count the file's content; the index does not; left unset, no key changes."""
    from protege.stages import Cfg, _dump_knowledge, plan_stages

    cfg, paths, before = _with_answers(tmp_path)
    synonyms = tmp_path / "synonyms.yaml"
    synonyms.write_text("premium support: harbor priority\n")
    cfg.knowledge.synonyms = synonyms
    set_ = {p.name: p.key for p in plan_stages(cfg, paths)}
    assert set_["index"] == before["index"]
    assert set_["data"] != before["data"] and set_["train"] != before["train"] and set_["answers"] != before["answers"]
    synonyms.write_text("premium support: harbor priority\nfree trial: welcome credit\n")
    edited = {p.name: p.key for p in plan_stages(cfg, paths)}
    assert edited["data"] != set_["data"] and edited["answers"] != set_["answers"] and edited["index"] == before["index"]
    unset = _with_answers(tmp_path)[0]
    assert "synonyms" not in Cfg("").parts(unset, {})[0]["knowledge"]
    assert "synonyms" not in _dump_knowledge(cfg.knowledge)  # by content only, never by its path

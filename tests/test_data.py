"""Data loading, validation errors (file:line, one line, exit 2 through the CLI), cleaning rules and prepare()."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from builder.clean import is_placeholder, normalize_whitespace, strip_html
from builder.data import load_files, prepare
from protege.config_file import config_from_dict
from protege.errors import DataError
from protege.paths import AssistantPaths

REPO = Path(__file__).resolve().parent.parent
SYSTEM = "You are Captain Byte."


def make_cfg(files, tokenizer_dir, **data) -> object:
    return config_from_dict({
        "name": "datatest", "persona": {"system_prompt": SYSTEM}, "base": {"model": str(tokenizer_dir)},
        "data": {"files": [str(f) for f in files], **data},
    })


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_all_formats_load_into_messages(tmp_path, tokenizer_dir):
    write(tmp_path / "d" / "alpaca.json", json.dumps([
        {"instruction": "Say hi", "input": "", "output": "Ahoy!"},
        {"instruction": "Add", "input": "2+2", "output": "Four", "system": "Be terse.",
         "history": [["First?", "Yes."]]},
    ], indent=2))
    write(tmp_path / "d" / "share.jsonl", json.dumps({"conversations": [
        {"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Ahoy there"}]}) + "\n")
    write(tmp_path / "d" / "sub" / "openai.jsonl", json.dumps({"messages": [
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}) + "\n")
    write(tmp_path / "d" / "rows.csv", 'prompt,response\n"Why, sea?","Because, matey"\n')
    write(tmp_path / "d" / "notes.txt", "ignored")
    res = load_files([tmp_path / "d"], make_cfg([], tokenizer_dir))
    by_file = {Path(c.source.rsplit(":", 1)[0]).name: c.messages for c in res.conversations}
    assert len(res.conversations) == 5 and len(res.files) == 4
    alp = [c for c in res.conversations if c.messages[0]["role"] == "system"][0].messages
    assert alp[0] == {"role": "system", "content": "Be terse."}
    assert [m["role"] for m in alp] == ["system", "user", "assistant", "user", "assistant"]
    assert alp[3]["content"] == "Add\n\n2+2"
    assert by_file["share.jsonl"][1] == {"role": "assistant", "content": "Ahoy there"}
    assert by_file["rows.csv"] == [{"role": "user", "content": "Why, sea?"},
                                   {"role": "assistant", "content": "Because, matey"}]


BAD = [
    ("bad.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                  '{"messages": [\n', 2, "invalid JSON"),
    ("miss.json", '[\n  {"instruction": "x", "output": "y"},\n  {"instruction": "only"}\n]', 3,
     "missing field 'output'"),
    ("role.jsonl", '{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n',
     1, "unknown role 'wizard'"),
    ("empty.jsonl", '\n{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "yo"}]}\n',
     2, "messages[0].content is empty"),
    ("end.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},'
                  ' {"role": "user", "content": "more"}]}\n', 1, "must end with an assistant message"),
    ("share.jsonl", '{"conversations": [{"from": "alien", "value": "hi"}]}\n', 1, "unknown role 'alien'"),
    ("rows.csv", "prompt,response\nhi,yo\nempty,\n", 3, "column 'response' is empty"),
    ("cols.csv", "question,answer\nhi,yo\n", 1, "missing CSV column 'prompt'"),
]


@pytest.mark.parametrize("name,text,line,problem", BAD, ids=[b[0] for b in BAD])
def test_malformed_input_names_file_and_line(tmp_path, tokenizer_dir, name, text, line, problem):
    f = write(tmp_path / name, text)
    with pytest.raises(DataError) as err:
        load_files([f], make_cfg([f], tokenizer_dir))
    assert str(err.value).startswith(f"{f}:{line}: ")
    assert problem in str(err.value)
    assert "\n" not in str(err.value)


def test_skip_mode_counts_skips(tmp_path, tokenizer_dir):
    f = write(tmp_path / "mixed.jsonl", "\n".join([
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo ho"}]}),
        json.dumps({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
    ]) + "\n")
    res = load_files([f], make_cfg([f], tokenizer_dir, on_error="skip"))
    assert len(res.conversations) == 1 and sum(res.skipped.values()) == 2
    assert res.skipped_examples[0].startswith(f"{f}:2: ")


def test_empty_dataset_is_an_error(tmp_path, tokenizer_dir, protege_home):
    f = write(tmp_path / "empty.jsonl", "\n\n")
    cfg = make_cfg([f], tokenizer_dir)
    with pytest.raises(DataError, match="no usable training examples"):
        prepare(cfg, AssistantPaths.for_name(cfg.name))


def test_cleaning_rules():
    assert strip_html("<p>Ahoy <b>matey</b></p><br/>Yes &amp; no") == "Ahoy matey\n\nYes & no"
    assert strip_html("keep <|im_end|> and a < b > c") == "keep <|im_end|> and a < b > c"
    assert normalize_whitespace("  a \t b \n\n\n\n c  ") == "a b\n\nc"
    assert is_placeholder("[Insert response here]") and is_placeholder("TODO")
    assert not is_placeholder("Ahoy! Todo lists live in the Deck tab.")


def test_prepare_cleans_splits_and_reports(tmp_path, tokenizer_dir, protege_home):
    def chat(u, a):
        return json.dumps({"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]})

    lines = [chat(f"How do I do task {i} on the {w} deck?", f"Ahoy! For task {i}, open the {w} panel and press "
                  f"button {i * 7 % 13}.") for i, w in enumerate(["red", "blue", "green", "gold", "iron", "oak",
                                                                  "pine", "salt", "wind", "moon"])]
    lines += [lines[0]]  # exact duplicate
    lines += [chat("How do I do task 1 on the blue deck??", "Ahoy! For task 1, open the blue panel and press "
                   "button 7!")]  # near duplicate
    lines += [chat("Hello", "<div>Ahoy!   Welcome   <i>aboard</i></div>")]  # HTML + whitespace, kept
    lines += [chat("Answer?", "[Insert response here]")]  # placeholder
    lines += [chat("Short?", "Ok")]  # under min_response_tokens
    f = write(tmp_path / "chats.jsonl", "\n".join(lines) + "\n")
    cfg = make_cfg([f], tokenizer_dir, val_fraction=0.2, max_seq_len=48, clean={"min_response_tokens": 3})
    paths = AssistantPaths.for_name(cfg.name)
    report = prepare(cfg, paths)
    c = report["cleaning"]
    assert (c["exact_duplicate"], c["near_duplicate"], c["placeholder"], c["short_response"]) == (1, 1, 1, 1)
    assert c["html_stripped"] == 1 and c["whitespace_normalized"] >= 1
    assert report["kept"] == 11 and report["train"] + report["val"] == 11 and report["val"] == 2
    assert sum(report["token_lengths"]["histogram"].values()) == 11
    assert 0 < report["truncation_rate"] <= 1 and report["overlong"] >= 1  # chats render to ~50 tokens
    train = [json.loads(x)["messages"] for x in (paths.data / "train.jsonl").read_text().splitlines()]
    assert all(m[0] == {"role": "system", "content": SYSTEM} for m in train)
    assert any(m[-1]["content"] == "Ahoy! Welcome aboard" for m in train + [
        json.loads(x)["messages"] for x in (paths.data / "val.jsonl").read_text().splitlines()])
    assert json.loads((paths.data / "data_report.json").read_text())["kept"] == 11
    # the API's prepare_data returns the same report, typed (a check writes nothing)
    from protege.api import Assistant
    from protege.stage_results import DataResult

    checked = Assistant(cfg, paths).prepare_data(write=False)
    assert isinstance(checked, DataResult) and checked.raw["cleaning"] == c
    assert (checked.kept, checked.train, checked.val, checked.grounded) == (11, 9, 2, None)
    assert checked.files == [str(f)] and checked.to_json() is checked.raw


@pytest.mark.parametrize("name,text,line,problem", [BAD[0], BAD[2], BAD[4], BAD[6]], ids=["json", "role", "end", "csv"])
def test_cli_data_check_one_line_error_exit_2(tmp_path, tokenizer_dir, name, text, line, problem):
    f = write(tmp_path / name, text)
    cfg = write(tmp_path / "cfg.yaml", yaml.safe_dump({"name": "clitest", "base": {"model": str(tokenizer_dir)},
                                                       "data": {"files": [name]}}))
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "protege"), "data", "check", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert f"{f.resolve()}:{line}: " in err and problem in err

"""Faults (issue 12): kill -9 during train, export and index, then rerun: the previous artifacts are byte-identical or
the new ones complete, never a mix (a full disk: tests/test_faults_disk.py).

The kill points are hit deterministically: a child process runs the real code with its filesystem or Chroma calls
wrapped so that it SIGKILLs itself before the k-th one, for every k until the run completes. The slow tests kill real
`protege` runs at a moment seen from outside."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from protege.errors import NoAdapterError
from protege.paths import AssistantPaths

REPO = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    """The child's environment, read at call time: PROTEGE_HOME is the test's throwaway registry."""
    return dict(os.environ, PYTHONPATH=str(REPO))


# Runs argv[3] (python) with the named callables wrapped: before the k-th call (k = argv[1]) the process SIGKILLs
# itself; an rmtree is cut in the middle (one file gone). argv[2]: "module:attr,..." to wrap.
KILLER = r"""
import importlib, os, signal, sys
k, calls = int(sys.argv[1]), [0]

def wrap(owner, attr):
    real = getattr(owner, attr)
    def killing(*a, **kw):
        if calls[0] == k:
            if attr == "rmtree" and os.path.isdir(a[0]):
                for root, _, files in os.walk(a[0]):
                    if files:
                        os.unlink(os.path.join(root, files[0]))
                        break
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return real(*a, **kw)
    setattr(owner, attr, killing)

for spec in sys.argv[2].split(","):
    mod, attr = spec.split(":")
    owner = importlib.import_module(mod) if "." not in attr else getattr(importlib.import_module(mod), attr.split(".")[0])
    wrap(owner, attr.split(".")[-1])
exec(sys.argv[3])
"""


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file below root except the (empty when idle) lock file."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def kill_at_every_step(prepare, wrapped: str, code: str, check) -> list[str]:
    """prepare(k) -> dict of argv substitutions; runs the child for k = 0, 1, ... until it completes unkilled, calling
    check(k, killed) after each; returns the outcomes check() reported."""
    outcomes = []
    for k in range(60):
        subs = prepare(k)
        child = subprocess.run([sys.executable, "-c", KILLER, str(k), wrapped, code.format(**{key: str(v) for key, v in subs.items()})], env=env(),
                               capture_output=True, text=True, timeout=300)
        killed = child.returncode == -signal.SIGKILL
        assert killed or child.returncode == 0, child.stderr[-3000:]
        outcomes.append(check(k, killed))
        if not killed:
            return outcomes
    pytest.fail("the operation never completed")


def fake_adapter(folder: Path, tag: str) -> Path:
    """A complete adapter as far as recovery is concerned (peft's marker file, weights, resolved config)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"tag": tag}))
    (folder / "adapter_model.safetensors").write_bytes(tag.encode() * 4096)
    (folder / "config.yaml").write_text(f"name: {tag}\n")
    return folder


# --- train: the adapter swap -----------------------------------------------------------------------------------------

def test_kill_at_every_step_of_the_adapter_swap_leaves_the_old_or_the_new_adapter(tmp_path):
    from builder.adapter_swap import recover

    old_snap = snapshot(fake_adapter(tmp_path / "ref-old", "old"))
    new_snap = snapshot(fake_adapter(tmp_path / "ref-new", "new"))

    def prepare(k):
        paths = AssistantPaths(tmp_path / f"k{k}" / "bot")
        fake_adapter(paths.adapter, "old")
        fake_adapter(paths.root / "adapter.tmp", "new")  # what save_adapter has written when it commits
        return {"tmp": paths.root / "adapter.tmp", "out": paths.adapter}

    def check(k, killed):
        paths = AssistantPaths(tmp_path / f"k{k}" / "bot")
        recover(paths)  # what the next train, eval or export does first
        got = snapshot(paths.adapter)
        assert got in (old_snap, new_snap), f"kill before step {k}: a mix of two adapters"
        assert sorted(p.name for p in paths.root.iterdir() if p.name != ".lock") == ["adapter"]
        return "old" if got == old_snap else "new"

    outcomes = kill_at_every_step(prepare, "pathlib:Path.rename,shutil:rmtree",
                                  "from pathlib import Path\nfrom builder.adapter_swap import commit\n"
                                  "commit(Path({tmp!r}), Path({out!r}))", check)
    assert outcomes[0] == "old" and outcomes[-1] == "new"
    assert outcomes == sorted(outcomes, key=["old", "new"].index), "once committed, the new adapter must win"


def test_only_adapter_old_left_by_an_older_protege_is_restored_not_dropped(tmp_path):
    from builder.adapter_swap import recover

    paths = AssistantPaths(tmp_path / "bot")
    before = snapshot(fake_adapter(paths.root / "adapter.old", "old"))
    (paths.root / "adapter.tmp").mkdir()  # the old code's half-written temp
    assert "restored" in recover(paths)
    assert snapshot(paths.adapter) == before and not (paths.root / "adapter.old").exists()


def test_export_merges_the_recovered_adapter_and_refuses_to_ship_the_bare_base(tmp_path, capsys):
    from export.pipeline import trained_adapter
    from protege.cli import main
    from protege.config_file import config_from_dict

    (tmp_path / "conv.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                         '{"role": "assistant", "content": "Ahoy!"}]}\n')
    trains = config_from_dict({"name": "bot", "data": {"files": [str(tmp_path / "conv.jsonl")]}})
    paths = AssistantPaths.for_name("bot").ensure()
    fake_adapter(paths.root / "adapter.old", "old")  # kill -9 between the old code's two renames
    assert trained_adapter(trains, paths) == paths.adapter
    assert json.loads((paths.adapter / "adapter_config.json").read_text()) == {"tag": "old"}

    shutil.rmtree(paths.adapter)
    with pytest.raises(NoAdapterError, match=r"bot: the config trains an adapter .* run `protege train`"):
        trained_adapter(trains, paths)
    assert trained_adapter(config_from_dict({"name": "bot"}), paths) is None  # no data.files: the base is the model
    cfg_file = tmp_path / "bot.yaml"
    cfg_file.write_text(yaml.safe_dump({"name": "bot", "data": {"files": ["conv.jsonl"]}}))
    assert main(["export", str(cfg_file)]) == 1
    err = capsys.readouterr().err
    assert "run `protege train`" in err and "would ship the base model" in err and not list(paths.gguf.glob("*"))


# --- export: the swap of a verified staging folder ------------------------------------------------------------------

def _export_tree(root: Path, tag: str, quants: list[str]) -> None:
    (root / "merged").mkdir(parents=True)
    (root / "merged" / "model.safetensors").write_bytes(tag.encode() * 2048)
    (root / "merged" / "config.json").write_text(json.dumps({"tag": tag}))
    (root / "gguf").mkdir()
    for q in quants:
        (root / "gguf" / f"bot-{q}.gguf").write_bytes(f"{tag}-{q}".encode() * 1024)
        (root / f"Modelfile.{q}").write_text(f"FROM ./gguf/bot-{q}.gguf  # {tag}\n")
    (root / "gguf" / "export_report.json").write_text(json.dumps({"tag": tag, "quants": quants}))


def test_kill_at_every_step_of_the_export_swap_then_rerun_gives_the_complete_new_export(tmp_path):
    from export.pipeline import STAGE_PREFIX, VERIFIED, recover

    _export_tree(tmp_path / "ref-new", "new", ["f16", "q8_0"])
    new_snap = snapshot(tmp_path / "ref-new")

    def prepare(k):
        paths = AssistantPaths(tmp_path / f"k{k}" / "bot")
        _export_tree(paths.root, "old", ["f16", "q4_0"])  # q4_0 is no longer exported: its Modelfile must go
        stage = paths.root / f"{STAGE_PREFIX}run"
        _export_tree(stage, "new", ["f16", "q8_0"])
        (stage / VERIFIED).write_text(json.dumps({"modelfiles": ["Modelfile.f16", "Modelfile.q8_0"]}))
        return {"root": paths.root, "stage": stage}

    def check(k, killed):
        paths = AssistantPaths(tmp_path / f"k{k}" / "bot")
        recover(paths)  # the next export's first step
        assert snapshot(paths.root) == new_snap, f"kill before step {k}: not the complete new export"
        return "new"

    kill_at_every_step(prepare, "pathlib:Path.replace,shutil:rmtree",
                       "from pathlib import Path\nfrom export.pipeline import _swap\nfrom protege.paths import "
                       "AssistantPaths\n_swap(AssistantPaths(Path({root!r})), Path({stage!r}))", check)


# --- index: Chroma writes cut between batches ------------------------------------------------------------------------

INDEX_CHILD = """
from pathlib import Path
import rag.store
rag.store.Store._batch = lambda self: 4  # many small writes: the kill lands between two of a file's batches
from rag.knowledge import KnowledgeBase
KnowledgeBase.from_folder(Path({folder!r}), "faults-kb", Path({persist!r})).index()
"""


def _kb_state(kb) -> dict[str, tuple]:
    return {i: (m["path"], m["file_hash"], d) for i, m, d in kb.store.iter_all(include=("metadatas", "documents"))}


def test_index_killed_between_chroma_batches_is_whole_after_the_rerun(tmp_path):
    from rag.knowledge import KnowledgeBase

    docs = tmp_path / "docs"
    shutil.copytree(REPO / "tests" / "assets" / "rag_corpus", docs)
    persist = tmp_path / "chroma"
    KnowledgeBase.from_folder(docs, "faults-kb", persist).index()  # the previous index
    # a new file whose chunks need several batches (sorted first, so its adds come first), an edit and a removal
    (docs / "aaa-manual.md").write_text("\n\n".join(f"## Part {i}\n" + " ".join(
        f"Component {i}-{j} is rated for {i * j + 3} amperes and must be checked every {j + 2} months."
        for j in range(12)) for i in range(8)))
    (docs / "warranty.txt").write_text((docs / "warranty.txt").read_text().replace("ten years", "twelve years"))
    (docs / "faq.html").unlink()
    child = subprocess.run([sys.executable, "-c", KILLER, "2", "chromadb.api.models.Collection:Collection.add",
                            INDEX_CHILD.format(folder=str(docs), persist=str(persist))],
                           env=env(), capture_output=True, text=True, timeout=600)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]

    fresh = KnowledgeBase.from_folder(docs, "fresh-kb", tmp_path / "fresh")
    fresh.index()
    want = _kb_state(fresh)
    kb = KnowledgeBase.from_folder(docs, "faults-kb", persist)
    assert _kb_state(kb) != want, "the kill should have left the index part-way"
    report = kb.index()  # the rerun
    assert "aaa-manual.md" in report["added"] + report["updated"]
    assert _kb_state(kb) == want
    assert kb.index()["writes"] == 0


# --- real processes killed from outside (slow) ------------------------------------------------------------------------

def _wait_then_kill(proc: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """SIGKILL the process group once ready() holds; False when the run finished first."""
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.05)
        if proc.poll() is not None:
            return False
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.slow
def test_real_train_killed_while_saving_then_rerun(tmp_path, tiny_model_dir):
    from builder.adapter_swap import is_adapter, recover
    from tests.test_train import cfg_dict

    from tests.synth import write_dataset

    data = write_dataset(tmp_path / "data", n=40)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(cfg_dict(tiny_model_dir, data, max_steps=4, method="lora")))
    exe = [sys.executable, "-m", "protege", "train", str(cfg)]
    first = subprocess.run(exe, env=env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    paths = AssistantPaths.for_name("traintest")
    before = snapshot(paths.adapter)
    cfg.write_text(yaml.safe_dump(cfg_dict(tiny_model_dir, data, max_steps=6, learning_rate=0.02, method="lora")))
    proc = subprocess.Popen(exe, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    killed = _wait_then_kill(proc, lambda: any(paths.root.glob("adapter.*")))
    recover(paths)
    after = snapshot(paths.adapter)
    assert after == before or (is_adapter(paths.adapter) and (paths.adapter / "config.yaml").is_file()
                               and (paths.adapter / "adapter_model.safetensors").is_file()), "a mix of adapters"
    assert not list(paths.root.glob("adapter.*"))
    again = subprocess.run(exe, env=env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert is_adapter(paths.adapter) and (killed or after != before)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["merged", "verified"])
def test_real_export_killed_then_rerun(tmp_path, tiny_model_dir, when):
    pytest.importorskip("llama_cpp")
    from export.pipeline import run
    from tests.test_export import make_adapter, make_config, write_val

    paths = AssistantPaths.for_name("tiny-export").ensure()
    make_adapter(tiny_model_dir, paths.adapter)
    write_val(paths)
    run(make_config(tiny_model_dir, quants=[]), paths)
    before = snapshot(paths.root)
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump({"name": "tiny-export", "base": {"model": str(tiny_model_dir)},
                                   "persona": {"system_prompt": "Be terse."},
                                   "export": {"quants": ["q8_0"], "default_quant": "q8_0",
                                              "parity": {"min_top1": 0.9}}}))
    proc = subprocess.Popen([sys.executable, "-m", "protege", "export", str(cfg)], env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = {"merged": ".export-stage-*/merged/model.safetensors", "verified": ".export-stage-*/.verified"}[when]
    _wait_then_kill(proc, lambda: any(paths.root.glob(marker)) or (paths.root / ".export-old").exists())
    again = subprocess.run([sys.executable, "-m", "protege", "export", str(cfg)], env=env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    after = snapshot(paths.root)
    report = json.loads((paths.gguf / "export_report.json").read_text())
    assert after != before and set(report["files"]) == {"f16", "q8_0"}
    for info in report["files"].values():
        assert (paths.gguf / info["file"]).stat().st_size == info["bytes"]
    assert sorted(p.name for p in paths.root.glob("Modelfile.*")) == ["Modelfile.f16", "Modelfile.q8_0"]
    assert not list(paths.root.glob(".export-*"))

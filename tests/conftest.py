"""Shared fixtures: offline hub, a throwaway registry per test, a tiny random Llama with the real SmolLM2 tokenizer,
and (slow) the imported SmolLM2-135M-Instruct shared by the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REPO = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZER_DIR = ASSETS / "smollm2-tokenizer"
# One base import per machine (about 40 s), reused by every test session and kept out of the per-test registry.
os.environ.setdefault("PROTEGE_BASE_HOME", str(REPO / ".pytest_cache" / "protege-base"))


@pytest.fixture(autouse=True)
def protege_home(tmp_path, monkeypatch) -> Path:
    """Each test builds into its own registry."""
    home = tmp_path / "protege-home"
    monkeypatch.setenv("PROTEGE_HOME", str(home))
    return home


def pytest_collection_modifyitems(config, items):
    gpu_items = [i for i in items if "gpu" in i.keywords]
    if not gpu_items:
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA (run on the lent GPU machine)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """The real SmolLM2 tokenizer (with its chat template), committed under tests/assets."""
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-64 random Llama saved as an HF directory with the SmolLM2 tokenizer: fast, offline."""
    from tests.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct imported once (slow tests only)."""
    from builder.base_model import import_base

    return import_base()


@pytest.fixture(scope="session")
def demo_kb_plain(tmp_path_factory):
    """The demo's knowledge indexed with the real embedder, with the demo config's gate and without its scope examples
    (the general-world and place checks alone; tests that toggle a knob restore it)."""
    import uuid

    from protege.config_file import load_config
    from rag.knowledge import KnowledgeBase

    repo = Path(__file__).resolve().parent.parent
    k = load_config(repo / "configs" / "captain-byte.yaml").knowledge
    kb = KnowledgeBase.from_folder(repo / "examples" / "captain-byte" / "knowledge", "demo-" + uuid.uuid4().hex[:6],
                                   tmp_path_factory.mktemp("demo-kb"), min_score=k.min_score, top_k=k.top_k,
                                   unknown_name_factor=k.unknown_name_factor)
    kb.index()
    return kb

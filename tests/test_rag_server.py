"""The store-dependent RAG cases of test_rag.py (incremental index, duplicates, broken files, retrieval gate) re-run
against a real Chroma server (`chroma run` on loopback, started and stopped here), via knowledge.chroma.host/port."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.net import free_port

from tests.test_rag import TestStore as _StoreCases
from tests.test_rag import corpus, embedder  # noqa: F401  (fixtures the shared cases use)

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    exe = Path(sys.executable).parent / "chroma"
    if not exe.exists():
        exe = shutil.which("chroma")
    assert exe, "the chroma CLI (from the chromadb package) is needed"
    port = free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    log = open(data.parent / "chroma-server.log", "wb")
    proc = subprocess.Popen([str(exe), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        import chromadb

        deadline = time.time() + 90
        while True:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port).heartbeat()
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"chroma run did not start: see {log.name}")
                time.sleep(0.5)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class TestServerStore(_StoreCases):
    @pytest.fixture
    def make_kb(self, tmp_path, embedder, chroma_server):
        host, port = chroma_server

        def make(folder: Path, **overrides):
            from rag.knowledge import KnowledgeBase

            kb = KnowledgeBase.from_folder(folder, "srv-" + uuid.uuid4().hex[:8], tmp_path / "report",
                                           chroma={"host": host, "port": port}, **overrides)
            assert type(kb.store.client).__name__ != "PersistentClient"
            return kb

        return make

    def test_nothing_is_written_locally(self, corpus, make_kb, tmp_path):
        kb = make_kb(corpus)
        kb.index()
        assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["index_report.json"]

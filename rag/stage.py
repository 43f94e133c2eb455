"""The `index` stage of `protege build`: the knowledge folder into the assistant's Chroma collection (or the Chroma
server). The indexing itself is a component (rag/index.py, used through rag/knowledge.py by the builder and the
CLI too); this is the stage's entry, the one function protege/stages.py runs."""

from __future__ import annotations

from protege.config import AssistantConfig
from protege.errors import ProtegeError
from protege.paths import AssistantPaths


def run(cfg: AssistantConfig, paths: AssistantPaths) -> dict:
    """Index cfg.knowledge.folder into paths.knowledge under the assistant's lock; the index report."""
    from protege.lock import assistant_lock
    from rag.knowledge import KnowledgeBase

    if cfg.knowledge is None or cfg.knowledge.folder is None:
        raise ProtegeError(f"{cfg.name}: no knowledge.folder in the config, nothing to index")
    with assistant_lock(paths):
        return KnowledgeBase.open(cfg, paths).index()

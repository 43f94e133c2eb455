"""Render conversations with the base tokenizer's own chat template into input_ids + labels.

Labels are -100 everywhere except the assistant replies, and each reply's end-of-turn token (`<|im_end|>` for
SmolLM2) IS a label: a model that never sees a loss on it never learns to stop. The character span of every reply is
found by rendering the conversation prefix with and without the reply, then mapped onto tokens with the fast
tokenizer's offsets, so no assumption is made about how the template glues turns together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


@dataclass
class FormatStats:
    total: int = 0
    truncated: int = 0
    dropped: int = 0
    label_tokens: int = 0
    tokens: int = 0
    kept: list[int] = field(default_factory=list)  # indices of the conversations that survived

    def as_dict(self) -> dict:
        return {"total": self.total, "truncated": self.truncated, "dropped": self.dropped,
                "tokens": self.tokens, "label_tokens": self.label_tokens}


def end_of_turn_token(tokenizer) -> str:
    """The token that closes an assistant turn; generation must stop on it (SmolLM2: `<|im_end|>` == eos)."""
    return tokenizer.eos_token


def _render(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the [start, end) character span of each assistant reply including its end token."""
    text = _render(tokenizer, messages)
    eot = end_of_turn_token(tokenizer)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1])
        if not text.startswith(prefix) or not text.startswith(upto):
            raise ValueError("the chat template does not render conversations prefix-stably; cannot mask labels")
        end = upto.rfind(eot, len(prefix))
        end = end + len(eot) if end >= 0 else len(upto)
        spans.append((len(prefix), end))
    return text, spans


def encode(tokenizer, messages: list[dict[str, str]]) -> Encoded:
    """input_ids of the rendered chat, labels = input_ids on assistant spans (reply + end-of-turn token), else -100."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    for t, (start, end) in enumerate(enc["offset_mapping"]):
        if end <= start:
            continue
        if any(s <= start and end <= e for s, e in spans):
            labels[t] = ids[t]
    return Encoded(ids, labels)


def encode_all(tokenizer, conversations: list[list[dict[str, str]]], max_seq_len: int,
               overlong: str = "truncate") -> tuple[list[Encoded], FormatStats]:
    """Encode many; sequences over max_seq_len are truncated (keep the start) or dropped, and counted."""
    stats = FormatStats(total=len(conversations))
    out = []
    for i, msgs in enumerate(conversations):
        e = encode(tokenizer, msgs)
        if len(e.input_ids) > max_seq_len:
            if overlong == "drop":
                stats.dropped += 1
                continue
            e = Encoded(e.input_ids[:max_seq_len], e.labels[:max_seq_len])
            stats.truncated += 1
            if all(lab == IGNORE for lab in e.labels):
                stats.dropped += 1  # the prompt alone fills the window: nothing left to learn from
                continue
        stats.tokens += len(e.input_ids)
        stats.label_tokens += sum(lab != IGNORE for lab in e.labels)
        stats.kept.append(i)
        out.append(e)
    return out, stats


def to_dataset(encoded: list[Encoded]):
    """A `datasets.Dataset` with input_ids + labels: trl's SFTTrainer uses such labels as they are."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]})


def assistant_loss(model, tokenizer, conversations: list[list[dict[str, str]]], max_seq_len: int,
                   device: str = "cpu") -> float | None:
    """Token-weighted mean cross-entropy over the assistant tokens (the labels training uses): the one val-loss
    maths, for `protege eval` (base vs tuned) and the export's merge choice, so their numbers compare."""
    import torch

    encoded, _ = encode_all(tokenizer, conversations, max_seq_len)
    total, count = 0.0, 0
    with torch.no_grad():
        for e in encoded:
            ids = torch.tensor([e.input_ids], device=device)
            target = torch.tensor([e.labels], device=device)[:, 1:]
            mask = target != IGNORE
            if not mask.any():
                continue
            logits = model(input_ids=ids).logits[:, :-1].float()
            total += torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum").item()
            count += int(mask.sum())
    return total / count if count else None

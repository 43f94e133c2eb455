"""Label masking with the real SmolLM2 chat template: -100 exactly outside assistant replies, `<|im_end|>` trained."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from builder.format import IGNORE, encode, encode_all


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


CHAT = [
    {"role": "system", "content": "You are Captain Byte."},
    {"role": "user", "content": "How do I deploy?"},
    {"role": "assistant", "content": "Ahoy! Run `byte deploy`."},
    {"role": "user", "content": "And roll back?"},
    {"role": "assistant", "content": "Ahoy! Run `byte rollback`.\nFair winds!"},
]


def test_labels_only_on_assistant_replies_and_their_end_token(tok):
    e = encode(tok, CHAT)
    assert len(e.input_ids) == len(e.labels)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == im_end  # generation stops on the token we train
    # The labelled tokens, grouped into contiguous runs, decode to exactly each reply + <|im_end|>.
    runs, cur = [], []
    for i, lab in zip(e.input_ids, e.labels):
        if lab != IGNORE:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    assert [tok.decode(r) for r in runs] == [
        "Ahoy! Run `byte deploy`.<|im_end|>", "Ahoy! Run `byte rollback`.\nFair winds!<|im_end|>"]
    # Every <|im_end|> that closes an assistant turn is a label; those closing system/user turns are not.
    ends = [k for k, t in enumerate(e.input_ids) if t == im_end]
    assert len(ends) == 5
    assert [e.labels[k] != IGNORE for k in ends] == [False, False, True, False, True]
    # Exactly the system and user tokens (and template scaffolding) are -100.
    text_ids = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    assert e.input_ids == list(text_ids)
    user_ids = tok("How do I deploy?", add_special_tokens=False)["input_ids"]
    start = next(k for k in range(len(e.input_ids)) if e.input_ids[k:k + len(user_ids)] == user_ids)
    assert all(lab == IGNORE for lab in e.labels[:start + len(user_ids)])


def test_default_system_prompt_of_template_is_masked(tok):
    e = encode(tok, CHAT[1:3])
    labelled = tok.decode([i for i, lab in zip(e.input_ids, e.labels) if lab != IGNORE])
    assert labelled == "Ahoy! Run `byte deploy`.<|im_end|>"
    assert "SmolLM" in tok.decode(e.input_ids)  # the template injected its own system prompt, unlabelled


def test_overlong_truncated_or_dropped_and_counted(tok):
    long_chat = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "Ahoy! " * 50}]
    short = CHAT[1:3]
    out, stats = encode_all(tok, [short, long_chat], max_seq_len=260, overlong="truncate")
    assert stats.truncated == 1 and stats.dropped == 0 and len(out) == 2
    assert len(out[1].input_ids) == 260 and any(lab != IGNORE for lab in out[1].labels)
    out, stats = encode_all(tok, [short, long_chat], max_seq_len=260, overlong="drop")
    assert stats.dropped == 1 and len(out) == 1
    out, stats = encode_all(tok, [long_chat], max_seq_len=100, overlong="truncate")
    assert stats.dropped == 1 and out == []  # the prompt alone fills the window: no labels left


def test_assistant_loss_is_the_token_weighted_mean_that_training_reports(tok, tmp_path):
    """One val-loss maths (eval and the export's merge choice): the mean over every assistant token of all the
    conversations, i.e. each conversation's HF `.loss` weighted by its count of labelled tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from builder.format import assistant_loss
    from tests.tiny_model import make_tiny_llama

    model = AutoModelForCausalLM.from_pretrained(make_tiny_llama(tmp_path / "m")).eval()
    chats = [CHAT, CHAT[:3], [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Ahoy! Hello."}]]
    total = count = 0.0
    with torch.no_grad():
        for e in encode_all(tok, chats, 512)[0]:
            n = sum(1 for x in e.labels[1:] if x != IGNORE)
            out = model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels]))
            total, count = total + float(out.loss) * n, count + n
    assert assistant_loss(model, tok, chats, 512) == pytest.approx(total / count, rel=1e-5)
    assert total / count != pytest.approx(float(out.loss), rel=1e-3)  # weighting matters: the chats differ

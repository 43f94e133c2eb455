"""The CPU training step (builder/cpu_step.py): micro-batches that keep the batch's gradient, and a loss over the
labelled positions that equals the model's own cross-entropy."""

from __future__ import annotations

import pytest
import torch

from builder.cpu_step import compact_head_parts, cpu_trainer, labelled_loss, split_batch


def _batch(lengths: list[int], seq: int | None = None, vocab: int = 100) -> dict:
    seq = seq or max(lengths)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (len(lengths), seq), generator=g)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    labels = torch.full((len(lengths), seq), -100)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
        ids[r, n:] = 0
        labels[r, n // 2:n] = ids[r, n // 2:n]  # the second half of each row is the "assistant" part
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_split_batch_bounds_tokens_and_trims_each_part():
    batch = {**_batch([5, 5, 3, 2], seq=7), "note": "kept"}
    parts = split_batch(batch, max_tokens=10)
    assert [p["input_ids"].shape for p in parts] == [(2, 5), (2, 3)]
    assert torch.equal(parts[1]["labels"], batch["labels"][2:4, :3])
    assert parts[0]["note"] == "kept"
    assert split_batch(batch, max_tokens=0) == [batch]  # off
    assert len(split_batch(batch, max_tokens=28)) == 1  # 4 rows x 7 fits
    one_each = split_batch(batch, max_tokens=1)  # a row longer than the budget still runs, alone
    assert [p["input_ids"].shape[0] for p in one_each] == [1, 1, 1, 1]


def test_split_batch_leaves_left_padded_rows_uncut():
    batch = _batch([4, 2], seq=4)
    batch["attention_mask"] = batch["attention_mask"].flip(1)
    parts = split_batch(batch, max_tokens=4)
    assert [p["input_ids"].shape for p in parts] == [(1, 4), (1, 4)]


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                             init_lora_weights=False))
    return model


def _grads(model) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return out


def test_micro_batched_labelled_loss_gives_the_models_own_loss_and_gradient(lora_model):
    batch = _batch([12, 11, 7, 5, 3], vocab=lora_model.config.vocab_size)
    full = lora_model(**batch).loss  # transformers' own shifted cross-entropy over the labelled positions
    full.backward()
    want = _grads(lora_model)

    parts = compact_head_parts(lora_model)
    assert parts is not None
    total = int((batch["labels"][:, 1:] != -100).sum())
    loss = torch.zeros(())
    for chunk in split_batch(batch, max_tokens=24):
        loss_sum, _, count = labelled_loss(parts, chunk)
        (loss_sum / total).backward()
        loss = loss + loss_sum.detach() / total
    got = _grads(lora_model)
    assert [c["input_ids"].shape for c in split_batch(batch, max_tokens=24)] == [(2, 12), (3, 7)]
    assert loss.item() == pytest.approx(full.item(), rel=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_models_that_scale_their_logits_keep_trls_loss(lora_model):
    lora_model.get_base_model().config.final_logit_softcapping = 30.0
    try:
        assert compact_head_parts(lora_model) is None
    finally:
        lora_model.get_base_model().config.final_logit_softcapping = None
    assert compact_head_parts(lora_model) is not None


def test_cpu_trainer_steps_like_the_whole_batch(lora_model, tiny_model_dir, tmp_path):
    """Through the real SFTTrainer: one SGD step from micro-batches moves the adapter as the whole batch does (SGD, as
    Adam's first step is about the gradient's sign and would hide a wrong scale)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = _batch([12, 11, 7, 5], vocab=lora_model.config.vocab_size)
    data = Dataset.from_dict({"input_ids": [r[m.bool()].tolist() for r, m in zip(rows["input_ids"],
                                                                                rows["attention_mask"])],
                              "labels": [r[m.bool()].tolist() for r, m in zip(rows["labels"], rows["attention_mask"])]})
    start = {n: p.detach().clone() for n, p in lora_model.named_parameters() if p.requires_grad}
    after = []
    for budget in (0, 12):
        with torch.no_grad():
            for n, p in lora_model.named_parameters():
                if n in start:
                    p.copy_(start[n])
        args = SFTConfig(output_dir=str(tmp_path / str(budget)), max_steps=1, per_device_train_batch_size=4,
                         learning_rate=1.0, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1,
                         lr_scheduler_type="constant", optim="sgd", seed=0, max_length=None, disable_tqdm=True)
        trainer = cpu_trainer(SFTTrainer, budget)(model=lora_model, args=args, train_dataset=data,
                                                  processing_class=tok)
        trainer.train()
        after.append({n: p.detach().clone() for n, p in lora_model.named_parameters() if n in start})
    moved = max((after[0][n] - start[n]).abs().max().item() for n in start)
    assert moved > 1e-4  # the step did something
    for n in start:
        torch.testing.assert_close(after[1][n], after[0][n], rtol=1e-4, atol=1e-6)

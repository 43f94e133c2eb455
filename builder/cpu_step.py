"""The CPU training step: the loss from the labelled positions only, and each batch run as micro-batches of bounded
size.

Why, measured on SmolLM2-135M (LoRA r16, fp32, the demo's grounded data, 2 cores):
- trl's fused LM head falls back to torch tiles off CUDA. It scores every position, padding and prompt included,
  and projects again in backward: 65 tokens/s, where a bare forward+backward with the full logits makes 96. Projecting
  only the positions that carry a label is one small matmul, and the cross-entropy is the same number.
- Activations grow with the tokens in one forward (about 3.4 MB a token in fp32), so 8 rows of 500 tokens peaked at
  13.7 GB. A batch is therefore run as micro-batches of at most `micro_batch_tokens` padded tokens. Each is trimmed to
  its own longest row, and each loss is divided by the whole batch's label count, so the gradient is the batch's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Configs that scale or cap the logits: the compact head would skip that, so these models keep trl's own loss.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


def compact_head_parts(model):
    """(backbone, lm_head) of a plain causal LM (PEFT-wrapped or not), or None where the compact loss would not equal
    the model's own: logit scaling or capping, or a multimodal wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = inner.config
    if config.get_text_config() is not config or any(getattr(config, a, None) is not None for a in _LOGIT_TRANSFORMS):
        return None
    backbone, head = getattr(inner, inner.base_model_prefix, None), inner.get_output_embeddings()
    return None if backbone is None or head is None else (backbone, head)


def labelled_loss(parts, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, correct next-token predictions, label count) over the positions whose next-token label
    is not -100, projecting only those through the LM head."""
    backbone, head = parts
    kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "use_cache")}
    hidden = backbone(**kwargs, use_cache=False).last_hidden_state[:, :-1]
    target = inputs["labels"][:, 1:]
    mask = target != -100
    logits = head(hidden[mask]).float()
    wanted = target[mask]
    loss_sum = F.cross_entropy(logits, wanted, reduction="sum")
    correct = (logits.detach().argmax(-1) == wanted).sum()
    return loss_sum, correct, mask.sum()


def split_batch(inputs: dict, max_tokens: int) -> list[dict]:
    """Consecutive rows while rows x their longest length stay within max_tokens (one row at least), each part cut
    to its longest row. Right padding is assumed from the attention mask; a batch without one stays whole."""
    mask = inputs.get("attention_mask")
    if mask is None or max_tokens <= 0 or mask.dim() != 2:
        return [inputs]
    lengths = mask.sum(dim=1).tolist()
    rows, parts, start, longest = mask.size(0), [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and max(longest, n) * (i - start + 1) > max_tokens:
            parts.append((start, i, longest))
            start, longest = i, n
        else:
            longest = max(longest, n)
    parts.append((start, rows, longest))
    if len(parts) == 1:
        return [inputs]
    seq = mask.size(1)
    right_padded = all(bool(mask[r, :n].all()) for r, n in enumerate(lengths))
    out = []
    for a, b, width in parts:
        width = width if right_padded else seq
        out.append({k: (v[a:b, :width] if v.dim() >= 2 and v.size(1) == seq else v[a:b])
                    if torch.is_tensor(v) and v.dim() >= 1 and v.size(0) == rows else v
                    for k, v in inputs.items()})
    return out


def cpu_trainer(base: type, micro_batch_tokens: int) -> type:
    """A subclass of trl's SFTTrainer (`base`) with the compact loss and micro-batched steps."""

    class CpuSFTTrainer(base):
        # compute_loss divides by the label count of the whole accumulation window (num_items_in_batch)
        loss_is_scaled_for_ga = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            parts = compact_head_parts(model)
            plain_nll = (self.args.loss_type == "nll" and self.label_smoother is None and self.compute_loss_func is None
                         and not getattr(self, "aux_loss_enabled", False))
            if return_outputs or parts is None or not plain_nll:  # trl's own loss for anything but plain NLL
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            loss_sum, correct, count = labelled_loss(parts, inputs)
            if num_items_in_batch is None:  # a plain mean; in training, spread over the accumulation steps
                steps = self.current_gradient_accumulation_steps if mode == "train" else 1
                num_items_in_batch = count.clamp(min=1) * steps
            loss = loss_sum / torch.as_tensor(num_items_in_batch).clamp(min=1)
            self._metrics[mode]["mean_token_accuracy"].append((correct / count.clamp(min=1)).item())
            if mode == "train" and "attention_mask" in inputs:
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            chunks = split_batch(inputs, micro_batch_tokens)
            if len(chunks) == 1:
                return super().training_step(model, inputs, num_items_in_batch)
            if num_items_in_batch is None:
                labels = inputs["labels"][:, 1:]
                num_items_in_batch = (labels != -100).sum() * self.current_gradient_accumulation_steps
            losses = [super(CpuSFTTrainer, self).training_step(model, c, num_items_in_batch) for c in chunks]
            return torch.stack(losses).sum()

    return CpuSFTTrainer

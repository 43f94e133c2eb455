"""Fine-tune a style adapter: trl's SFTTrainer + peft (QLoRA nf4 double-quant by default, LoRA or DoRA) on the
pre-tokenized, assistant-masked data from builder.format.

Safeguards: a validation split with early stopping on eval_loss, the best checkpoint (by val loss) restored at the end,
`resume=True` continuing from the last checkpoint after a crash, padding-free packed batches (or length-grouped
batches) so padding wastes no compute. Outputs: paths.adapter (PEFT adapter + resolved config) and paths.train
(checkpoints/, tensorboard/, metrics.json, loss.png).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

from protege.config import AssistantConfig
from protege.errors import ConfigError, DataError
from protege.paths import AssistantPaths


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_precision(requested: str, device: str) -> str:
    """auto: bf16 on CUDA when supported (else fp16), fp32 on CPU (fp16 on CPU is refused)."""
    import torch

    if requested == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp16" and device != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA GPU; use fp32 or bf16 on CPU")
    return requested


def load_model(cfg: AssistantConfig, base_dir: Path, device: str, precision: str):
    """The base model, 4-bit nf4 (double quant) for QLoRA, else in the compute dtype; wrapped with a LoRA/DoRA."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, set_seed

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    kwargs: dict = {"dtype": dtype, "trust_remote_code": cfg.base.trust_remote_code}
    tc = cfg.train
    if tc.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=torch.uint8,
        )
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
        kwargs["dtype"] = torch.float32 if device == "cpu" else dtype
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    if device == "cuda" and tc.method != "qlora":
        model.to("cuda")
    if tc.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=tc.gradient_checkpointing)
    model.config.use_cache = False
    # LoRA's A matrices are drawn from torch's global generator when the model is wrapped, before the Trainer seeds it
    # (at its init): unseeded, two builds from the same data trained different adapters (their losses parted at step
    # 3, once the first update of B had multiplied the different As)
    set_seed(tc.seed)
    lora = LoraConfig(
        r=tc.lora.r, lora_alpha=tc.lora.alpha, lora_dropout=tc.lora.dropout, target_modules=tc.lora.target_modules,
        use_dora=tc.method == "dora", task_type="CAUSAL_LM", bias="none",
    )
    return get_peft_model(model, lora)


def schedule(cfg: AssistantConfig, n_train_batches: int, has_val: bool) -> dict:
    """Effective step counts: eval at least twice per run even when the run is shorter than train.eval_steps."""
    tc = cfg.train
    per_epoch = max(1, math.ceil(n_train_batches / tc.grad_accum))
    total = tc.max_steps if tc.max_steps > 0 else max(1, math.ceil(per_epoch * tc.epochs))
    eval_steps = max(1, min(tc.eval_steps, total // 2 or 1))  # at least 2 evals (+ the step-0 one)
    save_steps = eval_steps * max(1, round(tc.save_steps / tc.eval_steps)) if has_val else min(tc.save_steps, total)
    return {"total_steps": total, "steps_per_epoch": per_epoch, "eval_steps": eval_steps,
            "save_steps": min(save_steps, total), "logging_steps": max(1, min(tc.logging_steps, eval_steps))}


def _conversations(cfg: AssistantConfig, paths: AssistantPaths) -> tuple[list, list, dict | None]:
    from builder.data import prepare, read_jsonl

    report = None
    if not (paths.data / "train.jsonl").is_file():
        report = prepare(cfg, paths)
    train = read_jsonl(paths.data / "train.jsonl")
    val_path = paths.data / "val.jsonl"
    val = read_jsonl(val_path) if val_path.is_file() else []
    if not train:
        raise DataError(f"{paths.data / 'train.jsonl'}: empty training set: nothing to learn from")
    return train, val, report


def build_trainer(cfg: AssistantConfig, paths: AssistantPaths, quiet: bool = False):
    """Everything up to trainer.train(): returns (trainer, progress callback, info dict)."""
    import torch
    from transformers import AutoTokenizer, EarlyStoppingCallback
    from transformers.integrations import TensorBoardCallback
    from trl import SFTConfig, SFTTrainer

    from builder.base_model import resolve_base
    from builder.format import encode_all, to_dataset
    from builder.monitor import ProgressCallback

    tc = cfg.train
    device = pick_device()
    precision = pick_precision(tc.precision, device)
    if device == "cpu" and tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    base_dir = resolve_base(cfg.base.model)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    train_convs, val_convs, _ = _conversations(cfg, paths)
    train_enc, train_stats = encode_all(tokenizer, train_convs, cfg.data.max_seq_len, cfg.data.overlong)
    val_enc, val_stats = encode_all(tokenizer, val_convs, cfg.data.max_seq_len, cfg.data.overlong)
    if not train_enc:
        raise DataError(f"{paths.data / 'train.jsonl'}: every example was dropped as longer than data.max_seq_len "
                        f"({cfg.data.max_seq_len})")
    has_val = bool(val_enc)
    if tc.packing and device == "cuda":  # packed rows of max_seq_len tokens, estimated for the schedule
        rows = max(1, math.ceil(train_stats.tokens / cfg.data.max_seq_len))
    else:
        rows = len(train_enc)
    sched = schedule(cfg, math.ceil(rows / tc.batch_size), has_val)
    ckpt_dir = paths.train / "checkpoints"
    # Padding-free packing flattens a batch into one sequence; CUDA attends per document (varlen kernels) but CPU
    # SDPA builds a dense mask over the flattened batch and was measured ~4x slower per token than padded batches,
    # so on CPU the same setting means length-grouped batches (little padding with short chats).
    packing = tc.packing and device == "cuda"
    micro, accum = tc.batch_size, tc.grad_accum
    args = SFTConfig(
        output_dir=str(ckpt_dir), seed=tc.seed, data_seed=tc.seed,
        num_train_epochs=tc.epochs, max_steps=tc.max_steps,
        per_device_train_batch_size=micro, per_device_eval_batch_size=micro,
        gradient_accumulation_steps=accum, gradient_checkpointing=tc.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if tc.gradient_checkpointing else None,
        learning_rate=tc.learning_rate, lr_scheduler_type=tc.lr_scheduler, warmup_steps=tc.warmup_ratio,
        weight_decay=tc.weight_decay, bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu",
        logging_steps=sched["logging_steps"], report_to="none",
        eval_strategy="steps" if has_val else "no", eval_steps=sched["eval_steps"] if has_val else None,
        save_strategy="steps", save_steps=sched["save_steps"], save_total_limit=tc.save_total_limit,
        load_best_model_at_end=has_val, metric_for_best_model="eval_loss" if has_val else None,
        greater_is_better=False if has_val else None,
        max_length=cfg.data.max_seq_len, packing=packing, packing_strategy="bfd",
        padding_free=packing, train_sampling_strategy="random" if packing else "group_by_length",
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, dataloader_pin_memory=device == "cuda",
        dataset_num_proc=None, disable_tqdm=quiet,
    )
    model = load_model(cfg, base_dir, device, precision)
    callbacks = [progress := ProgressCallback(quiet=quiet)]
    if tc.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(paths.train / "tensorboard"))))
    elif tc.report_to == "swanlab":
        args.report_to = ["swanlab"]
    if has_val and tc.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=tc.early_stopping_patience))
    trainer_class = SFTTrainer
    if device == "cpu":  # the labelled positions only, in micro-batches (builder.cpu_step says why)
        from builder.cpu_step import cpu_trainer

        trainer_class = cpu_trainer(SFTTrainer, tc.micro_batch_tokens)
    trainer = trainer_class(
        model=model, args=args, train_dataset=to_dataset(train_enc),
        eval_dataset=to_dataset(val_enc) if has_val else None, processing_class=tokenizer, callbacks=callbacks,
    )
    # Re-plan with the real number of (packed) rows now that trl has prepared the dataset.
    sched = schedule(cfg, math.ceil(len(trainer.train_dataset) / tc.batch_size), has_val)
    if has_val:
        trainer.args.eval_steps = sched["eval_steps"]
    trainer.args.save_steps, trainer.args.logging_steps = sched["save_steps"], sched["logging_steps"]
    if precision == "fp32":  # trl casts QLoRA adapters to bf16; on CPU we keep fp32 compute end to end
        for p in trainer.model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    info = {"device": device, "precision": precision, "method": tc.method, "packing": packing, "base": str(base_dir),
            "schedule": sched, "format_train": train_stats.as_dict(), "format_val": val_stats.as_dict()}
    return trainer, progress, info


def last_checkpoint(paths: AssistantPaths) -> str | None:
    """The newest COMPLETE checkpoint: the Trainer writes trainer_state.json last, so a run killed while saving
    leaves a folder without it, which is skipped."""
    folder = paths.train / "checkpoints"
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
            and (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def save_adapter(model, tokenizer, cfg: AssistantConfig, out: Path) -> None:
    """Atomic: write next to the destination, then swap it in (builder.adapter_swap: a kill never loses both)."""
    from builder.adapter_swap import TMP, commit, sibling
    from protege.config_file import save_resolved

    tmp = sibling(out, TMP)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_resolved(cfg, tmp)
    except BaseException:  # a full disk: the previous adapter stays, the half-written one goes
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit(tmp, out)


def run(cfg: AssistantConfig, paths: AssistantPaths, resume: bool = False, quiet: bool = False) -> dict:
    """Train the adapter; returns the metrics also written to paths.train/metrics.json. Holds the assistant's lock."""
    from protege.lock import assistant_lock

    with assistant_lock(paths):
        return _run(cfg, paths, resume, quiet)


def _run(cfg: AssistantConfig, paths: AssistantPaths, resume: bool, quiet: bool) -> dict:
    from builder.adapter_swap import recover
    from builder.monitor import peak_memory_mb, plot_loss, write_metrics

    recover(paths)  # a swap cut short by a kill: the previous (or the completed new) adapter back in place
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    paths.train.mkdir(parents=True, exist_ok=True)
    checkpoint = last_checkpoint(paths) if resume else None
    if not resume and (paths.train / "checkpoints").is_dir():
        shutil.rmtree(paths.train / "checkpoints")
    trainer, progress, info = build_trainer(cfg, paths, quiet=quiet)
    initial_eval = None
    if trainer.eval_dataset is not None and checkpoint is None:
        initial_eval = trainer.evaluate()["eval_loss"]
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    wall = time.perf_counter() - started
    history = trainer.state.log_history
    # With load_best_model_at_end the model in hand is the best checkpoint: its val loss is the best metric.
    final_eval = trainer.state.best_metric
    save_adapter(trainer.model, trainer.processing_class, cfg, paths.adapter)
    from builder.monitor import curves

    train_curve, val_curve = curves(history)
    if initial_eval is not None:
        val_curve.append((0, initial_eval))  # train() starts a fresh state, so the step-0 eval is added here
    val_curve = sorted(dict(val_curve).items())  # (the closing evaluate repeats the last step)
    metrics = {
        **info,
        "resumed_from": checkpoint,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "epochs_done": trainer.state.epoch,
        "train_loss": result.training_loss,
        "train_loss_curve": train_curve,
        "val_loss_initial": initial_eval,
        "val_loss_curve": val_curve,
        "val_loss_final": final_eval,
        "best_val_loss": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "early_stopped": trainer.state.global_step < trainer.state.max_steps,
        "train_seconds": round(wall, 2),
        "train_tokens": progress.train_tokens,
        "tokens_per_second": round(progress.train_tokens / progress.train_seconds, 1) if progress.train_seconds else 0,
        "peak_memory_mb": peak_memory_mb(info["device"]),
        "adapter": str(paths.adapter),
    }
    write_metrics(paths.train / "metrics.json", metrics)
    plot_loss(train_curve, val_curve, paths.train / "loss.png")
    return metrics

"""Training on the tiny random Llama (CPU): base frozen, adapter learns, val loss tracked, best checkpoint kept,
outputs loadable; a SIGKILLed run resumes to the same total step count (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from protege.config_file import config_from_dict
from protege.paths import AssistantPaths
from tests.synth import write_dataset

REPO = Path(__file__).resolve().parent.parent


def cfg_dict(tiny_model_dir, data_file, **train) -> dict:
    return {
        "name": "traintest", "persona": {"system_prompt": "You are Captain Byte."},
        "base": {"model": str(tiny_model_dir)},
        "data": {"files": [str(data_file)], "val_fraction": 0.2, "max_seq_len": 128,
                 "clean": {"near_dup_threshold": None}},
        "train": {"max_steps": 6, "batch_size": 2, "eval_steps": 2, "save_steps": 2, "learning_rate": 5e-3,
                  "num_threads": 1, "early_stopping_patience": None, **train},
    }


@pytest.fixture
def data_file(tmp_path):
    return write_dataset(tmp_path / "data", n=40)


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_base_frozen_adapter_changes(tiny_model_dir, data_file, method):
    from builder.data import prepare
    from builder.train import build_trainer

    cfg = config_from_dict(cfg_dict(tiny_model_dir, data_file, method=method, max_steps=3))
    paths = AssistantPaths.for_name(cfg.name)
    prepare(cfg, paths)
    trainer, _, info = build_trainer(cfg, paths, quiet=True)
    assert info["precision"] == "fp32" and info["device"] == "cpu"
    model = trainer.model
    if method == "qlora":
        import bitsandbytes as bnb

        q = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert q and q[0].weight.quant_type == "nf4" and q[0].weight.quant_state.nested  # nf4 + double quant
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
    trainer.train()
    assert trainer.state.global_step == 3
    after = dict(model.named_parameters())
    assert all(torch.equal(base[n], after[n].detach()) for n in base), "a base weight changed"
    changed = [n for n in lora if not torch.equal(lora[n], after[n].detach())]
    assert len(changed) == len(lora), f"{len(lora) - len(changed)} adapter tensors did not change"


def test_the_same_data_and_seed_train_the_same_adapter(tiny_model_dir, data_file):
    """Whatever torch's generator held before (another process, an earlier model), a build wraps the base with the
    same LoRA weights and trains the same adapter: the seed is set before the wrap, not only by the Trainer."""
    from builder.data import prepare
    from builder.train import build_trainer

    cfg = config_from_dict(cfg_dict(tiny_model_dir, data_file, method="lora", max_steps=2))
    paths = AssistantPaths.for_name(cfg.name)
    prepare(cfg, paths)
    adapters = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # a generator in another state, as in a fresh process that did other work first
        trainer, _, _ = build_trainer(cfg, paths, quiet=True)
        first = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_A" in n}
        trainer.train()
        adapters.append((first, {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}))
    (init1, end1), (init2, end2) = adapters
    assert init1 and all(torch.equal(init1[n], init2[n]) for n in init1)
    assert all(torch.equal(end1[n], end2[n]) for n in end1)


def test_run_writes_adapter_metrics_and_keeps_best(tiny_model_dir, data_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from builder.train import run

    # A learning rate high enough to overshoot: the best val loss need not be the last one.
    cfg = config_from_dict(cfg_dict(tiny_model_dir, data_file, max_steps=8, learning_rate=0.05, method="lora"))
    paths = AssistantPaths.for_name(cfg.name)
    m = run(cfg, paths, quiet=True)
    assert m["global_step"] == 8 and m["val_loss_initial"] is not None
    curve = dict(m["val_loss_curve"])
    assert sorted(curve) == [0, 2, 4, 6, 8] and all(v > 0 for v in curve.values())
    best_step = min((s for s in curve if s > 0), key=curve.get)
    assert m["best_val_loss"] == pytest.approx(curve[best_step])
    assert m["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    # The saved adapter IS the best checkpoint's adapter, whatever step came last.
    best = load_file(Path(m["best_checkpoint"]) / "adapter_model.safetensors")
    final = load_file(paths.adapter / "adapter_model.safetensors")
    assert best.keys() == final.keys() and all(torch.equal(best[k], final[k]) for k in best)
    assert m["val_loss_final"] == pytest.approx(m["best_val_loss"], rel=1e-4)
    assert m["tokens_per_second"] > 0 and m["peak_memory_mb"] > 0 and m["train_tokens"] > 0
    # Outputs: adapter loadable by PeftModel, resolved config beside it, metrics, loss plot, TensorBoard events.
    assert (paths.adapter / "adapter_config.json").is_file() and (paths.adapter / "config.yaml").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, paths.adapter)
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero
    saved = json.loads((paths.train / "metrics.json").read_text())
    assert saved["best_checkpoint"] == m["best_checkpoint"]
    assert (paths.train / "loss.png").stat().st_size > 1000
    assert list((paths.train / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_cli_train_and_resume_after_sigkill(tiny_model_dir, data_file, tmp_path):
    """SIGKILL after the first checkpoint, then `--resume`: same total steps, continued from that checkpoint."""
    cfg = tmp_path / "cfg.yaml"
    d = cfg_dict(tiny_model_dir, data_file, max_steps=30, eval_steps=5, save_steps=5, method="lora")
    cfg.write_text(yaml.safe_dump(d))
    exe = str(REPO / ".venv" / "bin" / "protege")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ckpts = Path(os.environ["PROTEGE_HOME"]) / "assistants" / "traintest" / "train" / "checkpoints"
    proc = subprocess.Popen([exe, "train", str(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not list(ckpts.glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = sorted(int(p.parent.name.split("-")[1]) for p in ckpts.glob("checkpoint-*/trainer_state.json"))
    assert done and done[-1] < 30, "the run finished before it could be killed"
    out = subprocess.run([exe, "train", str(cfg), "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((ckpts.parent / "metrics.json").read_text())
    assert m["resumed_from"].endswith(f"checkpoint-{done[-1]}")
    assert m["global_step"] == m["max_steps"] == 30
    assert "trained 30/30 steps" in out.stdout

"""The export stage: merge -> GGUF (llama.cpp's converter) -> quantize -> verify -> Modelfiles, all or nothing.

Everything is built in a staging folder beside the targets and swapped in only after verification passed, so an
interrupted or failed export leaves the previous good export untouched. A crash in the middle of the swap itself
(a few renames) is finished by the next run: the staging folder is marked verified before the first rename.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from protege.config import AssistantConfig
from protege.errors import ProtegeError
from protege.paths import AssistantPaths

STAGE_PREFIX = ".export-stage-"
BACKUP = ".export-old"
VERIFIED = ".verified"


def _swap(paths: AssistantPaths, stage: Path) -> None:
    """Move the verified staging contents into place (idempotent: a resumed swap skips what already moved)."""
    marker = json.loads((stage / VERIFIED).read_text())
    backup = paths.root / BACKUP
    backup.mkdir(exist_ok=True)
    for old in paths.root.glob("Modelfile.*"):  # quants no longer exported lose their Modelfile too
        if old.name not in marker["modelfiles"]:
            old.replace(backup / old.name)
    for name in ["merged", "gguf", *marker["modelfiles"]]:
        staged, final = stage / name, paths.root / name
        if not staged.exists():
            continue  # already swapped before an interruption
        if final.exists():
            old = backup / name
            if old.is_dir():
                shutil.rmtree(old)
            final.replace(old)
        staged.replace(final)
    shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)


def recover(paths: AssistantPaths) -> None:
    """Finish a verified swap cut short; drop unverified staging folders left by a killed export. Only under the
    assistant's lock: without it, the staging folder of an export still running would be deleted."""
    if not paths.root.is_dir():
        return
    from protege.lock import assistant_lock

    with assistant_lock(paths):
        _recover(paths)


def _recover(paths: AssistantPaths) -> None:
    for stage in sorted(paths.root.glob(f"{STAGE_PREFIX}*")):
        if (stage / VERIFIED).is_file():
            _swap(paths, stage)
        else:
            shutil.rmtree(stage, ignore_errors=True)
    if (paths.root / BACKUP).exists() and not list(paths.root.glob(f"{STAGE_PREFIX}*")):
        shutil.rmtree(paths.root / BACKUP, ignore_errors=True)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from export.convert import converter_version

    out = {"converter": converter_version()}
    for pkg in ("llama-cpp-python", "transformers", "peft", "torch", "gguf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _template_parts(tokenizer):
    from export.chat_template import UntranslatableTemplate, analyze, hf_render, special_tokens_of

    try:
        return analyze(hf_render(tokenizer), tokenizer.bos_token, special_tokens_of(tokenizer),
                       tokenizer.eos_token), None
    except UntranslatableTemplate as e:
        return None, f"chat template not translated to Ollama's Go template ({e}); Ollama will guess it"


def _end_of_turn(tokenizer, parts) -> str | None:
    from export.chat_template import special_tokens_of

    if parts is not None:
        found = [t for t in special_tokens_of(tokenizer) if t in parts.suffix["assistant"]]
        if found:
            return max(found, key=len)
    return tokenizer.eos_token


def _file_info(path: Path) -> dict:
    return {"file": path.name, "bytes": path.stat().st_size}


def run(cfg: AssistantConfig, paths: AssistantPaths, bundle: bool = False) -> dict:
    """Export one assistant; returns the report also written to gguf/export_report.json. Holds the assistant's lock."""
    from protege.lock import assistant_lock

    paths.ensure()
    with assistant_lock(paths):
        return _run(cfg, paths, bundle)


def trained_adapter(cfg: AssistantConfig, paths: AssistantPaths) -> Path | None:
    """The adapter to merge, after finishing a swap cut short by a kill; None only when the config trains none
    (no data.files): exporting the bare base for a config that trains would silently ship the wrong model."""
    from builder.adapter_swap import is_adapter, recover as recover_adapter

    recover_adapter(paths)
    if is_adapter(paths.adapter):
        return paths.adapter
    if cfg.data.files:
        from protege.errors import NoAdapterError

        raise NoAdapterError(f"{cfg.name}: the config trains an adapter (data.files) but {paths.adapter} holds none: "
                             f"run `protege train` (or `protege build`) first; exporting now would ship the base model")
    return None


def _run(cfg: AssistantConfig, paths: AssistantPaths, bundle: bool) -> dict:
    from builder.base_model import resolve_base
    from export import convert, merge, modelfile, quantize, verify
    from export.merge import read_val
    from export.parity_text import PARITY_TEXT
    from protege.config_file import atomic_write_text, save_resolved
    from protege.errors import require

    started = time.time()
    recover(paths)
    adapter = trained_adapter(cfg, paths)
    convert.llama_cpp_dir()  # a missing converter is reported before minutes of merging
    require("llama_cpp", "export")
    base_dir = resolve_base(cfg.base.model)
    arch = convert.check_supported(base_dir)
    pair_base = quantize.pair_base_gguf(cfg) if cfg.export.lora_pair else None  # fails before minutes of merging
    stage = Path(tempfile.mkdtemp(dir=paths.root, prefix=STAGE_PREFIX))
    report: dict[str, Any] = {"name": cfg.name, "architecture": arch, "versions": _versions()}
    timings: dict[str, float] = {}
    tick = [time.time()]

    def lap(name: str) -> None:
        now = time.time()
        timings[name] = round(now - tick[0], 2)
        tick[0] = now
    try:
        val_file = paths.data / "val.jsonl"
        report["merge"] = merge.merge(base_dir, adapter, stage / "merged", cfg.export.merge.base, val_file,
                                      cfg.data.max_seq_len, trained_on_nf4=cfg.train.method == "qlora")
        lap("merge")
        out = cfg.export.outtype
        gguf_dir = stage / "gguf"
        ggufs = {out: convert.convert_hf_to_gguf(stage / "merged", gguf_dir / paths.gguf_file(out).name, out)}
        lap("convert")
        for q in cfg.export.quants:
            ggufs[q] = quantize.quantize(ggufs[out], gguf_dir / paths.gguf_file(q).name, q)
        lap("quantize")

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(stage / "merged")
        parts, note = _template_parts(tokenizer)
        eot = _end_of_turn(tokenizer, parts)
        convs = verify.default_conversations(cfg.persona.system_prompt, read_val(val_file))
        report["verification"] = verify.verify_export(stage / "merged", ggufs, cfg.export.parity, PARITY_TEXT,
                                                      convs, eot, f16_key=out)
        lap("verify")
        if (cfg.export.lora_gguf or pair_base) and adapter is not None:
            from export.lora_gguf import convert_lora

            lora = convert_lora(adapter, base_dir, gguf_dir / f"{cfg.name}-lora-{out}.gguf", out)
            report["lora_gguf"] = _file_info(lora)
            if pair_base:
                report["lora_pair"] = quantize.lora_pair(
                    pair_base, lora, gguf_dir / f"{cfg.name}-lora-base.gguf", tokenizer, PARITY_TEXT,
                    cfg.export.parity.positions, report["verification"]["perplexity"][out],
                    cfg.export.parity.max_ppl_increase)
            lap("lora")
        report["files"] = {q: _file_info(p) for q, p in ggufs.items()}
        report["template"] = {"translated": parts is not None, "note": note, "end_of_turn": eot,
                              "stops": parts.stops if parts else [t for t in dict.fromkeys([tokenizer.eos_token, eot]) if t]}
        for q, p in ggufs.items():
            modelfile.write_modelfile(stage / f"Modelfile.{q}", p, parts, cfg.persona.system_prompt,
                                      cfg.export.num_ctx, report["template"]["stops"], note)
        save_resolved(cfg, gguf_dir)
        save_resolved(cfg, stage / "merged")
        report["default_quant"] = cfg.export.default_quant if cfg.export.default_quant in ggufs else out
        report["seconds"] = round(time.time() - started, 1)
        report["timings"] = timings
        atomic_write_text(gguf_dir / "export_report.json", json.dumps(report, indent=2, default=str) + "\n")
        marker = {"modelfiles": sorted(p.name for p in stage.glob("Modelfile.*"))}
        atomic_write_text(stage / VERIFIED, json.dumps(marker))
    except verify.VerificationError as e:
        report["verification"] = e.report
        atomic_write_text(paths.root / "export_report.failed.json", json.dumps(report, indent=2, default=str) + "\n")
        shutil.rmtree(stage, ignore_errors=True)
        raise ProtegeError(f"{e} (previous export kept; details in {paths.root / 'export_report.failed.json'})") \
            from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _swap(paths, stage)
    (paths.root / "export_report.failed.json").unlink(missing_ok=True)
    if bundle:
        from export.bundle import build_bundle

        report["bundle"] = build_bundle(cfg, paths)
    return report

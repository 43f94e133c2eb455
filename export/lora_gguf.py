"""LoRA-only GGUF (llama.cpp's `convert_lora_to_gguf.py`), for runtimes that apply the adapter at load time
(`llama_cpp.Llama(model_path=base.gguf, lora_path=this)`, Ollama's `ADAPTER`). Always pass the local base (`--base`):
without it the script would look the base up on the hub.
"""

from __future__ import annotations

from pathlib import Path

from protege.errors import ProtegeError


def convert_lora(adapter_dir: Path, base_dir: Path, outfile: Path, outtype: str = "f16") -> Path:
    from export.convert import check_supported, run_script

    if not (adapter_dir / "adapter_config.json").is_file():
        raise ProtegeError(f"{adapter_dir}: not a PEFT adapter (no adapter_config.json)")
    check_supported(base_dir)
    outfile.parent.mkdir(parents=True, exist_ok=True)
    run_script("convert_lora_to_gguf.py", ["--base", str(base_dir), "--outfile", str(outfile), "--outtype", outtype,
                                           str(adapter_dir)], f"LoRA GGUF conversion of {adapter_dir}")
    if not outfile.is_file():
        raise ProtegeError(f"LoRA GGUF conversion of {adapter_dir} wrote no {outfile}")
    return outfile

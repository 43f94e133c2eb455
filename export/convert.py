"""GGUF conversion with llama.cpp's own `convert_hf_to_gguf.py`, of exactly the runtime's version.

The converter and its matching `gguf-py` are copied out of the llama-cpp-python sdist at install time (`make setup`
puts them in `<venv>/share/protege/llama.cpp/`); nothing is cloned or downloaded at run time. It runs as a subprocess
so that its `gguf` (which must match the runtime) never clashes with the `gguf` package in this interpreter.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from protege.errors import ProtegeError

ENV_DIR = "PROTEGE_LLAMA_CPP_DIR"
OUTTYPES = ("f16", "bf16", "f32")


def llama_cpp_dir() -> Path:
    """The folder holding convert_hf_to_gguf.py + gguf-py (+ conversion/ in recent llama.cpp)."""
    override = os.environ.get(ENV_DIR)
    folder = Path(override).expanduser() if override else Path(sys.prefix) / "share" / "protege" / "llama.cpp"
    script = folder / "convert_hf_to_gguf.py"
    if not script.is_file() or not (folder / "gguf-py" / "gguf").is_dir():
        where = f"${ENV_DIR}={override}" if override else str(folder)
        raise ProtegeError(f"llama.cpp's GGUF converter is missing at {where}: run `make setup` "
                           "(it copies convert_hf_to_gguf.py and gguf-py from the llama-cpp-python sdist)")
    if "from conversion import" in script.read_text(encoding="utf-8") and not (folder / "conversion").is_dir():
        raise ProtegeError(f"{folder}/conversion/ is missing (this llama.cpp splits the converter into a package): "
                           "run `make setup` again")
    return folder


def converter_version(folder: Path | None = None) -> str:
    folder = folder or llama_cpp_dir()
    version = folder / "VERSION"
    return version.read_text().strip() if version.is_file() else "unknown"


def supported_architectures(folder: Path | None = None) -> set[str]:
    """HF architecture names the converter handles, read from its source (no torch import, milliseconds)."""
    folder = folder or llama_cpp_dir()
    registry = folder / "conversion" / "__init__.py"
    if registry.is_file():  # recent llama.cpp: a TEXT_MODEL_MAP dict literal
        tree = ast.parse(registry.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
            if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and isinstance(node.value, ast.Dict):
                return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    # older llama.cpp: @ModelBase.register("A", "B") decorators in the single script
    text = (folder / "convert_hf_to_gguf.py").read_text(encoding="utf-8")
    names: set[str] = set()
    for args in re.findall(r"@(?:Model|ModelBase)\.register\(([^)]*)\)", text):
        names.update(re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", args))
    return names


def model_architecture(model_dir: Path) -> str:
    """The architecture the converter will pick: `architectures[0]`, or the text sub-config's."""
    cfg_file = Path(model_dir) / "config.json"
    try:
        hparams = json.loads(cfg_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise ProtegeError(f"{cfg_file}: cannot read the model config ({e})") from None
    arch = (hparams.get("text_config") or {}).get("architectures") or hparams.get("architectures") or []
    if not arch:
        raise ProtegeError(f"{cfg_file}: no `architectures` entry, cannot tell which GGUF converter applies")
    return arch[0]


def check_supported(model_dir: Path) -> str:
    """Fail early (before any merge) when llama.cpp cannot convert this architecture."""
    folder = llama_cpp_dir()
    arch = model_architecture(model_dir)
    if arch not in supported_architectures(folder):
        raise ProtegeError(f"architecture {arch} (from {Path(model_dir) / 'config.json'}) is not supported by "
                           f"llama.cpp's converter {converter_version(folder)}: cannot export it to GGUF")
    return arch


def _env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder / "gguf-py"), str(folder)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["HF_HUB_OFFLINE"] = "1"  # the converter must never reach the network
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def run_script(script: str, args: list[str], what: str) -> str:
    """Run one of llama.cpp's converter scripts; on failure raise with the last lines of its log."""
    folder = llama_cpp_dir()
    cmd = [sys.executable, str(folder / script), *args]
    proc = subprocess.run(cmd, env=_env(folder), capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(line for line in log.strip().splitlines()[-8:])
        raise ProtegeError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return log


def convert_hf_to_gguf(model_dir: Path, outfile: Path, outtype: str = "f16") -> Path:
    """HF directory -> one GGUF file (f16, bf16 or f32)."""
    if outtype not in OUTTYPES:
        raise ProtegeError(f"export.outtype: expected one of {', '.join(OUTTYPES)}, got {outtype!r}")
    check_supported(model_dir)
    outfile.parent.mkdir(parents=True, exist_ok=True)
    run_script("convert_hf_to_gguf.py", [str(model_dir), "--outfile", str(outfile), "--outtype", outtype],
               f"GGUF conversion of {model_dir}")
    if not outfile.is_file():
        raise ProtegeError(f"GGUF conversion of {model_dir} wrote no {outfile}")
    return outfile

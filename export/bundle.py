"""The edge bundle (`protege export --bundle`): one folder + tarball that serves the assistant offline on a machine
with only `pip install 'protege[serve,llamacpp]'` (plus `rag` when it has knowledge).

The bundle is a tiny $PROTEGE_HOME, so `protege serve` finds it through its ordinary registry:

```
<name>-bundle/
  launch.sh, launch.py                 PROTEGE_HOME=<bundle>/home protege serve "$@"
  Modelfile                            for `ollama create <name> -f Modelfile`
  README.txt
  home/assistants/<name>/config.yaml   the resolved config (serve.quant = the bundled GGUF; serve.api_keys as
                                       sha256:<hex> digests: the server accepts the keys, the bundle never holds them)
  home/assistants/<name>/gguf/<name>-<quant>.gguf
  home/assistants/<name>/knowledge/    the Chroma index, when the assistant has one
```
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from protege.config import AssistantConfig
from protege.errors import ProtegeError
from protege.keys import hash_key
from protege.paths import AssistantPaths

LAUNCH_SH = """#!/bin/sh
# Serve this bundle offline (needs: pip install 'protege[serve,llamacpp]'). Extra arguments go to `protege serve`,
# e.g. PROTEGE_API_KEYS=<key> ./launch.sh --host 0.0.0.0 --port 11435 (another address than loopback needs a key)
HERE=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-python3}" "$HERE/launch.py" "$@"
"""

LAUNCH_PY = '''#!/usr/bin/env python3
"""Serve this bundle offline: `protege serve` over the bundled home (needs protege[serve,llamacpp])."""
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ["PROTEGE_HOME"] = str(HERE / "home")
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
try:
    from protege.cli import main
except ImportError:
    sys.exit("protege is not installed: pip install 'protege[serve,llamacpp]'")
sys.exit(main(["serve", *sys.argv[1:]]))
'''


def chosen_quant(cfg: AssistantConfig, paths: AssistantPaths) -> str:
    quants = paths.quants()
    if not quants:
        raise ProtegeError(f"{paths.gguf}: no GGUF to bundle: run `protege export` first")
    for q in (cfg.serve.quant, cfg.export.default_quant, "q4_k_m", "q8_0", cfg.export.outtype):
        if q and q in quants:
            return q
    return quants[0]


def build_bundle(cfg: AssistantConfig, paths: AssistantPaths) -> dict:
    """Write paths.bundle/ and <root>/<name>-bundle.tar.gz atomically; return what went in."""
    from export.modelfile import write_modelfile
    from protege.config_file import save_resolved

    quant = chosen_quant(cfg, paths)
    bundled = cfg.model_copy(deep=True)
    bundled.serve.quant = quant
    bundled.serve.api_keys = [hash_key(k) for k in cfg.serve.api_keys]  # never a key in clear text in the bundle
    if bundled.knowledge is not None:
        bundled.knowledge.chroma.host = None  # the index travels inside the bundle: embedded Chroma
    tmp = Path(tempfile.mkdtemp(dir=paths.root, prefix=".bundle-"))
    try:
        home = AssistantPaths(tmp / "home" / "assistants" / cfg.name)
        home.gguf.mkdir(parents=True)
        gguf = home.gguf_file(quant)
        _link_or_copy(paths.gguf_file(quant), gguf)
        for extra in ("export_report.json",):
            if (paths.gguf / extra).is_file():
                shutil.copy2(paths.gguf / extra, home.gguf / extra)
        has_knowledge = paths.knowledge.is_dir() and any(paths.knowledge.iterdir())
        if has_knowledge:
            shutil.copytree(paths.knowledge, home.knowledge)
        save_resolved(bundled, home.root)
        src_modelfile = paths.modelfile(quant)
        if src_modelfile.is_file():  # same template/stops as the verified export, FROM re-pointed
            text = src_modelfile.read_text()
            rel = os.path.relpath(gguf, tmp)
            (tmp / "Modelfile").write_text("\n".join(f"FROM ./{rel}" if line.startswith("FROM ") else line
                                                     for line in text.splitlines()) + "\n")
        else:
            write_modelfile(tmp / "Modelfile", gguf, None, cfg.persona.system_prompt, cfg.export.num_ctx)
        for name, text in (("launch.sh", LAUNCH_SH), ("launch.py", LAUNCH_PY)):
            (tmp / name).write_text(text)
            (tmp / name).chmod(0o755)
        (tmp / "README.txt").write_text(_readme(cfg, quant, has_knowledge))
        tarball = paths.root / f"{cfg.name}-bundle.tar.gz"
        tmp_tar = tmp.with_suffix(".tar.gz")
        with tarfile.open(tmp_tar, "w:gz", compresslevel=1) as tar:
            tar.add(tmp, arcname=f"{cfg.name}-bundle")
        if paths.bundle.exists():
            old = paths.root / ".bundle-old"
            shutil.rmtree(old, ignore_errors=True)
            paths.bundle.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(paths.bundle)
        tmp_tar.replace(tarball)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.with_suffix(".tar.gz").unlink(missing_ok=True)
        raise
    return {"dir": str(paths.bundle), "tarball": str(tarball), "quant": quant, "knowledge": has_knowledge,
            "bytes": tarball.stat().st_size}


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when possible (same disk, no copy of a multi-GB file), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _readme(cfg: AssistantConfig, quant: str, has_knowledge: bool) -> str:
    extras = "serve,llamacpp" + (",rag" if has_knowledge else "")
    return (f"{cfg.name}: an offline assistant bundle ({quant} GGUF"
            f"{', with its document index' if has_knowledge else ''}).\n\n"
            f"  pip install 'protege[{extras}]'\n"
            f"  ./launch.sh --port 11435        # OpenAI API at http://127.0.0.1:11435/v1, Ollama API at /api\n\n"
            + (f"API keys: the assistant's {len(cfg.serve.api_keys)} key(s) are stored as SHA-256 digests only; "
               "send one as 'Authorization: Bearer <key>'.\n" if cfg.serve.api_keys else "")
            + "Serving another address than loopback (--host 0.0.0.0) needs a key: PROTEGE_API_KEYS=<key> "
              "./launch.sh ... (or --insecure).\n\n"
            f"Or with Ollama: ollama create {cfg.name} -f Modelfile\n")

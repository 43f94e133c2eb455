"""Where things live: $PROTEGE_HOME (default ~/.protege) holds imported bases and the registry of built assistants.

```
$PROTEGE_HOME/base/<model-id>/          imported base models
$PROTEGE_HOME/assistants/<name>/        one folder per built assistant (see AssistantPaths)
```
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def protege_home() -> Path:
    return Path(os.environ.get("PROTEGE_HOME") or Path.home() / ".protege").expanduser()


def base_dir(model_id: str) -> Path:
    """Imported bases; PROTEGE_BASE_HOME lets tests and CI share one import across throwaway registries."""
    root = os.environ.get("PROTEGE_BASE_HOME")
    return (Path(root).expanduser() if root else protege_home() / "base") / model_id.replace("/", "--")


def assistants_dir() -> Path:
    return protege_home() / "assistants"


@dataclass(frozen=True)
class AssistantPaths:
    """The artifact layout of one assistant; every stage writes only below `root`."""

    root: Path

    @classmethod
    def for_name(cls, name: str) -> "AssistantPaths":
        return cls(assistants_dir() / name)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def manifest(self) -> Path:
        return self.root / "build.json"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def gguf(self) -> Path:
        return self.root / "gguf"

    @property
    def knowledge(self) -> Path:
        return self.root / "knowledge"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    def gguf_file(self, quant: str) -> Path:
        return self.gguf / f"{self.name}-{quant.lower()}.gguf"

    def modelfile(self, quant: str) -> Path:
        return self.root / f"Modelfile.{quant.lower()}"

    def quants(self) -> list[str]:
        """Quant tags with a GGUF on disk, e.g. ['f16', 'q4_k_m', 'q8_0']."""
        prefix = f"{self.name}-"
        if not self.gguf.is_dir():
            return []
        return sorted(p.stem[len(prefix):] for p in self.gguf.glob(f"{prefix}*.gguf") if "lora" not in p.stem)

    def lora_pair(self) -> tuple[Path, Path] | None:
        """(base GGUF, LoRA GGUF) of the pair `export.lora_pair` wrote, served as `<name>:q4_1-lora`; None when the
        export wrote none (its export_report.json names the two files)."""
        try:
            report = json.loads((self.gguf / "export_report.json").read_text(encoding="utf-8"))
            load = report["lora_pair"]["load"]
            base, lora = self.gguf / load["model_path"], self.gguf / load["lora_path"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (base, lora) if base.is_file() and lora.is_file() else None

    def ensure(self) -> "AssistantPaths":
        self.root.mkdir(parents=True, exist_ok=True)
        return self


def list_assistants() -> list[AssistantPaths]:
    """Built assistants: folders of the registry that hold a resolved config."""
    root = assistants_dir()
    if not root.is_dir():
        return []
    return [AssistantPaths(p) for p in sorted(root.iterdir()) if (p / "config.yaml").is_file()]


def read_manifest(paths: AssistantPaths) -> dict:
    try:
        return json.loads(paths.manifest.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}

"""Which models the server exposes: every built assistant in $PROTEGE_HOME with its quant tags, plus assistants given
by config file. Ids follow Ollama's habit: `<name>` (the default quant) and `<name>:<quant>`; `<name>:latest` is an
alias of `<name>`. Unknown ids are an error (404 model_not_found), never a fallback to some default model.

An assistant with no exported GGUF (e.g. configs/minimal.yaml on the embedded base) is served from the embedded base
GGUF with its persona as the system prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from protege.config import DEFAULT_BASE, AssistantConfig
from protege.paths import AssistantPaths, list_assistants

log = logging.getLogger("protege.serve")
PAIR_TAG = "q4_1-lora"  # the id tag of export.lora_pair's base + adapter (protege/paths.py lora_pair)


@dataclass
class ModelSpec:
    id: str
    assistant: str
    quant: str                       # quant tag of the GGUF, "base" for the embedded base GGUF
    cfg: AssistantConfig
    paths: AssistantPaths
    gguf: Path | None = None
    modified: float = 0.0
    aliases: list[str] = field(default_factory=list)
    lora: Path | None = None         # a LoRA GGUF applied at load time over `gguf` (the q4_1-lora pair)

    @property
    def system_prompt(self) -> str:
        return self.cfg.persona.system_prompt

    @property
    def has_knowledge(self) -> bool:
        return self.cfg.knowledge is not None

    @property
    def merged(self) -> Path | None:
        return self.paths.merged if (self.paths.merged / "config.json").is_file() else None

    @property
    def adapter(self) -> Path | None:
        return self.paths.adapter if (self.paths.adapter / "adapter_config.json").is_file() else None


class Registry:
    """Model id -> ModelSpec. Built once at startup; `refresh()` picks up assistants built since."""

    def __init__(self, configs: list[AssistantConfig] | None = None, include_built: bool = True,
                 embedded_gguf: Path | None = None):
        self.configs = list(configs or [])
        self.include_built = include_built
        self._embedded = embedded_gguf
        self.specs: dict[str, ModelSpec] = {}
        self.refresh()

    def embedded(self) -> Path | None:
        if self._embedded is None:
            try:
                from builder.base_model import embedded_gguf

                self._embedded = embedded_gguf()
            except Exception as e:  # noqa: BLE001 - no embedded base: assistants without GGUF are skipped
                log.warning("no embedded base GGUF: %s", e)
        return self._embedded

    def refresh(self) -> None:
        specs: dict[str, ModelSpec] = {}
        given = {c.name: c for c in self.configs}
        entries: list[tuple[AssistantConfig, AssistantPaths]] = []
        if self.include_built:
            from protege.config_file import load_config

            for paths in list_assistants():
                if paths.name in given:
                    continue
                try:
                    entries.append((load_config(paths.config), paths))
                except Exception as e:  # noqa: BLE001 - one broken folder must not take the server down
                    log.warning("skipping %s: %s", paths.root, e)
        entries += [(c, AssistantPaths.for_name(c.name)) for c in self.configs]
        for cfg, paths in entries:
            for spec in self._specs_for(cfg, paths):
                specs[spec.id] = spec
        self.specs = specs

    def _specs_for(self, cfg: AssistantConfig, paths: AssistantPaths) -> list[ModelSpec]:
        quants, pair = paths.quants(), paths.lora_pair()
        if not quants:
            gguf = self.embedded() if cfg.base.model == DEFAULT_BASE else None
            return [ModelSpec(cfg.name, cfg.name, "base", cfg, paths, gguf, _mtime(gguf), [f"{cfg.name}:latest"])]
        files = {q: (paths.gguf_file(q), None) for q in quants}
        if pair:
            files[PAIR_TAG] = pair
        default = cfg.serve.quant or cfg.export.default_quant
        if default not in files:
            default = next((q for q in ("q4_k_m", "q8_0", "f16") if q in files), quants[0])
        out = [ModelSpec(f"{cfg.name}:{q}", cfg.name, q, cfg, paths, f, _mtime(f), lora=lora)
               for q, (f, lora) in files.items()]
        f, lora = files[default]
        out.append(ModelSpec(cfg.name, cfg.name, default, cfg, paths, f, _mtime(f), [f"{cfg.name}:latest"], lora))
        return out

    def ids(self) -> list[str]:
        return sorted(self.specs)

    def get(self, model_id: str) -> ModelSpec | None:
        spec = self.specs.get(model_id)
        if spec is None and model_id.endswith(":latest"):
            spec = self.specs.get(model_id.removesuffix(":latest"))
        return spec

    def default_id(self) -> str | None:
        """The model preloaded at startup: the first config given, else the first built assistant."""
        if self.configs and self.configs[0].name in self.specs:
            return self.configs[0].name
        names = [s.id for s in self.specs.values() if ":" not in s.id]
        return names[0] if names else None


def _mtime(p: Path | None) -> float:
    try:
        return p.stat().st_mtime if p else 0.0
    except OSError:
        return 0.0

"""The public Python API: what `protege build`, `protege list` and `protege ask` are thin shells over.

One answer path: `Assistant.chat` and `Assistant.ask` go through the server's own request code (serve/service.py
`Service.prepare` + `Service.stream`: persona, retrieval on the conversation, the confidence gate, the grounded prompt,
RAG sampling defaults, the guard) on the same engine and GGUF choice (serve/registry.py), so a question answers the same
way here, in the terminal and over HTTP. Heavy parts (chromadb, llama_cpp, torch) load on first use only.

    import protege
    a = protege.build("configs/captain-byte.yaml")        # or protege.Assistant.load("captain-byte")
    print(a.ask("How much does the Sloop server cost each month?").text)
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Coroutine, Iterable, TypeVar

from protege.config import AssistantConfig
from protege.errors import AssistantNotFound, ConfigError, GenerationError, NoKnowledgeError, require
from protege.paths import AssistantPaths, protege_home
from protege.reply import Reply, ReplyStream
from protege.stage_results import DataResult, EvalResult, ExportResult, IndexResult, TrainResult
from rag.types import Retrieval, Source

if TYPE_CHECKING:
    from protege.stages import StageOutcome
    from rag.knowledge import KnowledgeBase
    from serve.engines.base import GenParams
    from serve.service import Service

__all__ = ["Assistant", "AssistantInfo", "Reply", "ReplyStream", "build", "import_base", "list_assistants"]

T = TypeVar("T")
# GenParams fields a caller may set through chat(**gen); model/messages/prompt/n/logprobs are the API's to decide.
GEN_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "json_schema", "json_object",
            "presence_penalty", "frequency_penalty", "repeat_penalty")
ASK_TEMPERATURE = 0.0  # `ask` is a lookup: the same question gives the same answer (what `protege ask` always did)


@dataclass(frozen=True)
class AssistantInfo:
    """A built assistant of the registry, as `protege list` shows it."""

    name: str
    path: Path
    quants: list[str]
    has_knowledge: bool
    built_at: str | None = None


def list_assistants() -> list[AssistantInfo]:
    """Built assistants in $PROTEGE_HOME/assistants, by name."""
    from protege.paths import list_assistants as folders, read_manifest

    return [AssistantInfo(p.name, p.root, p.quants(), p.knowledge.is_dir(), read_manifest(p).get("built_at"))
            for p in folders()]


def build(config: str | Path | AssistantConfig, force: Iterable[str] = (), progress: bool = True,
          overrides: Iterable[str] = (), on_stage: Callable[[str, str], None] | None = None,
          engine: str = "llamacpp") -> "Assistant":
    """What `protege build` does: run the stages whose inputs changed (protege/stages.py decides) and register the
    assistant. `force`: stage names or "all"; `progress` prints a rule per stage. The returned Assistant's `.outcomes`
    says what became of each stage, in build order, with its typed result (see `Assistant.outcomes`):

        a = protege.build("configs/captain-byte.yaml")
        train = next(o.result for o in a.outcomes if o.name == "train")   # a TrainResult
        print(train.best_val_loss, train.headline())
    """
    from protege.lock import assistant_lock
    from protege.stages import STAGES, build as run_stages

    force = list(force)
    bad = [s for s in force if s not in STAGES and s != "all"]
    if bad:
        raise ConfigError(f"--force {bad[0]}: expected one of {', '.join(STAGES)} or all")
    cfg = config if isinstance(config, AssistantConfig) else _load_config(config, overrides)
    paths = AssistantPaths.for_name(cfg.name).ensure()
    console = None
    if progress:
        from rich.console import Console

        console = Console()

    def stage(name: str, event: str) -> None:
        if console is not None and event == "start":
            console.rule(f"[bold cyan]{name}")
        if on_stage is not None:
            on_stage(name, event)

    with assistant_lock(paths):  # before the header: a busy assistant fails before anything is printed
        if console is not None:
            console.print(f"[bold]Building {cfg.name}[/] into {paths.root}")
        outcomes = run_stages(cfg, paths, force=set(force), on_stage=stage)
    a = Assistant(cfg, paths, engine=engine)
    a.outcomes = outcomes
    return a


def import_base(model: str | None = None, force: bool = False) -> Path:
    """Import a base model into $PROTEGE_HOME/base (`protege import-base`; None: the embedded SmolLM2): its folder."""
    from builder.base_model import DEFAULT_BASE, import_base as run

    return run(model or DEFAULT_BASE, force=force)


def _load_config(path: str | Path, overrides: Iterable[str] = ()) -> AssistantConfig:
    from protege.config_file import load_config

    return load_config(Path(path), list(overrides))


class Assistant:
    """A built (or buildable) assistant: answer with it, retrieve from its documents, run its stages.

    The model loads on the first generation and stays loaded until `close()` (or the end of a `with` block).

    `outcomes` (from `protege.build()`, else empty): per stage in build order, a StageOutcome (protege/stages.py) with
    `name`, `status` (ran, skipped or not-applicable), `seconds`, `note` and `result`, the stage's typed result
    (protege/stage_results.py: IndexResult, DataResult, TrainResult, EvalResult, ExportResult, AnswersResult,
    RegisterResult). A result has the headline fields as attributes, the stage's whole report in `.raw` (what
    build.json records) and `.headline()` (what `protege build` prints); a skipped stage's is read back from
    build.json, a not-applicable stage's is empty."""

    def __init__(self, config: AssistantConfig, paths: AssistantPaths | None = None, *, quant: str | None = None,
                 engine: str | Callable[[Any], Any] = "llamacpp", knowledge: "KnowledgeBase | None" = None):
        """`engine`: "llamacpp" (CPU), "vllm", "fake" (tests) or a factory ModelSpec -> Engine; `knowledge`: an open
        KnowledgeBase to use instead of the config's (`protege ask --folder`)."""
        self.config = config
        self.paths = paths or AssistantPaths.for_name(config.name)
        self.quant = quant
        self.outcomes: list[StageOutcome] = []  # set by protege.build(): see the class docstring
        self._engine = engine
        self._kb = knowledge
        self._folder_only = False  # from_knowledge: no assistant folder of its own to lock
        self._lock = threading.Lock()
        self._service: Service | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- finding one --------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, *, engine: str | Callable[[Any], Any] = "llamacpp") -> "Assistant":
        """A built assistant by name (`name:quant` picks a quant) from $PROTEGE_HOME, with its resolved config."""
        from protege.config_file import load_config

        base, _, quant = name.partition(":")
        paths = AssistantPaths.for_name(base)
        if not base or not paths.config.is_file():
            raise AssistantNotFound(name, str(protege_home()), [a.name for a in list_assistants()])
        if quant and quant != "latest" and quant not in paths.quants():
            raise AssistantNotFound(name, str(protege_home()), [f"{base}:{q}" for q in paths.quants()])
        return cls(load_config(paths.config), paths, quant=quant or None, engine=engine)

    @classmethod
    def from_config(cls, path: str | Path, overrides: Iterable[str] = (), *, quant: str | None = None,
                    engine: str | Callable[[Any], Any] = "llamacpp") -> "Assistant":
        """An assistant from its assistant.yaml (`overrides`: KEY.PATH=VALUE strings, like `--set`)."""
        return cls(_load_config(path, overrides), quant=quant, engine=engine)

    @classmethod
    def from_knowledge(cls, kb: "KnowledgeBase", *, engine: str | Callable[[Any], Any] = "llamacpp") -> "Assistant":
        """A bare knowledge folder (`protege ask --folder`): the embedded base model answers, with no persona."""
        from protege.config_file import config_from_dict

        cfg = config_from_dict({"name": "knowledge", "persona": {"system_prompt": ""}}, source="--folder")
        a = cls(cfg.model_copy(update={"knowledge": kb.cfg}), knowledge=kb, engine=engine)
        a._folder_only = True
        return a

    # --- what it is ---------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def model_id(self) -> str:
        """The id the server lists it under: `name` (the default quant) or `name:quant`."""
        return f"{self.name}:{self.quant}" if self.quant else self.name

    @property
    def has_knowledge(self) -> bool:
        return self.config.knowledge is not None

    @property
    def knowledge(self) -> "KnowledgeBase":
        """The knowledge base (opened once; chat, ask and retrieve share it)."""
        with self._lock:
            if self._kb is None:
                if self.config.knowledge is None:
                    raise NoKnowledgeError(f"{self.name}: the config has no knowledge section")
                from rag.knowledge import KnowledgeBase

                self._kb = KnowledgeBase.open(self.config, self.paths)
            return self._kb

    # --- answering ----------------------------------------------------------------------------------------------
    def chat(self, messages: list[dict], stream: bool = False, rag: bool | None = None,
             **gen: Any) -> "Reply | ReplyStream":
        """Answer a conversation like the server does: persona, and RAG when the assistant has knowledge and `rag`
        (None: the config's serve.rag). `stream`: a ReplyStream of text pieces instead of the Reply. `gen`:
        max_tokens, temperature, top_p, top_k, seed, stop, the penalties, json_schema/json_object."""
        unknown = sorted(set(gen) - set(GEN_KEYS))
        if unknown:
            raise TypeError(f"chat() got an unexpected keyword argument {unknown[0]!r} (expected one of "
                            f"{', '.join(GEN_KEYS)})")
        from serve.engines.base import GenParams

        if isinstance(gen.get("stop"), str):
            gen["stop"] = [gen["stop"]]
        params = GenParams(model=self.model_id, messages=[dict(m) for m in messages], **gen)
        rag = self.config.serve.rag if rag is None else rag
        s = ReplyStream(self, lambda out: self._generate(params, rag, out))
        if stream:
            return s
        for _ in s:
            pass
        return s.reply

    def ask(self, question: str | list[dict], **gen: Any) -> Reply:
        """The grounded answer to a question (or a conversation): the server's RAG path, at temperature 0 unless
        `gen` says otherwise. Below knowledge.min_score the refusal comes back and the model is never called."""
        if not self.has_knowledge:
            raise NoKnowledgeError(f"{self.name}: the config has no knowledge section (chat() answers without one)")
        gen.setdefault("temperature", ASK_TEMPERATURE)
        messages = [{"role": "user", "content": question}] if isinstance(question, str) else list(question)
        reply = self.chat(messages, rag=True, **gen)
        assert isinstance(reply, Reply)
        return reply

    def retrieve(self, question: str | list[dict]) -> Retrieval:
        """The ranked sources with the gate applied (`refused` True below knowledge.min_score); a conversation is
        searched as the server searches it (a follow-up together with the turns before)."""
        kb = self.knowledge
        return kb.retrieve(question) if isinstance(question, str) else kb.retrieve_conversation(question)

    # --- stages -------------------------------------------------------------------------------------------------
    def index(self, progress: bool = False) -> IndexResult:
        """Index the knowledge folder (incremental) under the assistant's lock; an IndexResult (`added`, `updated`,
        `removed`, `unchanged`, `skipped` file names, `chunks_total`; the index report in `.raw`)."""
        from protege.lock import assistant_lock

        kb = self.knowledge
        if self._folder_only:
            return IndexResult.from_json(kb.index(progress=progress))
        with assistant_lock(self.paths.ensure()):
            return IndexResult.from_json(kb.index(progress=progress))

    def prepare_data(self, write: bool = True) -> DataResult:
        """Validate, clean, dedupe and split the conversations (builder/data.py): a DataResult (`kept`, `train`,
        `val`, `grounded`, `files`; the data report in `.raw`); `write` False only checks (no lock: a check may run
        beside a build)."""
        from builder.data import prepare
        from protege.lock import assistant_lock

        if not write:
            return DataResult.from_json(prepare(self.config, self.paths, write=False))
        with assistant_lock(self.paths.ensure()):
            return DataResult.from_json(prepare(self.config, self.paths, write=True))

    def train(self, resume: bool = False) -> TrainResult:
        """Fine-tune the style adapter (builder/train.py) on freshly prepared data (a resumed run keeps the split it
        started with); a TrainResult (`best_val_loss`, `val_loss_initial`, `steps`, `tokens_per_second`, `adapter`,
        ...; the training metrics in `.raw`)."""
        from builder.data import prepare
        from builder.train import run
        from protege.lock import assistant_lock

        with assistant_lock(self.paths.ensure()):
            if not (resume and (self.paths.data / "train.jsonl").is_file()):
                prepare(self.config, self.paths)
            return TrainResult.from_json(run(self.config, self.paths, resume=resume))

    def eval(self) -> EvalResult:
        """Base vs tuned on the held-out split (builder/evaluate.py; needs the train extra): an EvalResult (`base`
        and `tuned` EvalScores: `val_loss`, `perplexity`, `rouge_l`, ...; the eval report in `.raw`)."""
        from builder.evaluate import run
        from protege.lock import assistant_lock

        with assistant_lock(self.paths.ensure()):
            return EvalResult.from_json(run(self.config, self.paths))

    def eval_answers(self, qa: list[dict], progress: bool = False) -> tuple[dict, list[dict]]:
        """Ask every QA row (rag/evaluate.load_qa) through `ask` and score the replies: answer accuracy, source
        hit@3, guard rate, refusal precision/recall (metrics, per-question detail)."""
        from protege.answer_eval import evaluate_answers

        return evaluate_answers(self, qa, progress=progress)

    def export(self, bundle: bool = False) -> ExportResult:
        """Merge, GGUF, quantize, verify (export/pipeline.py); `bundle` also writes the offline edge bundle. An
        ExportResult (`merge`, `verified`, `default_quant`, `files` quant -> file; the export report in `.raw`). A
        loaded model is let go so the next answer uses the new GGUF."""
        from export.pipeline import run

        report = run(self.config, self.paths, bundle=bundle)
        self._drop_engines()
        return ExportResult.from_json(report)

    # --- plumbing -----------------------------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this assistant's own event loop (a thread): works inside Jupyter's loop too."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name=f"protege-{self.name}", daemon=True)
            self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # Ctrl-C while waiting: stop the work on the loop too (a no-op when it failed by itself)
            raise

    def _svc(self) -> "Service":
        if self._service is None:
            require("starlette", "serve")  # serve.ops (API-key scoping) is part of the request path
            from serve.engines import engine_factory
            from serve.models import ModelManager
            from serve.registry import Registry
            from serve.service import Service

            serve_cfg = self.config.serve.model_copy(update={"parallel": 1, "rag": True})  # `rag` decides per call
            factory = engine_factory(self._engine, serve_cfg) if isinstance(self._engine, str) else self._engine
            cfg = self.config.model_copy(update={"serve": serve_cfg})
            manager = ModelManager(Registry([cfg], include_built=False), factory)
            # local use, like `protege run`: the caller owns the files, so rag=False is theirs to choose
            self._service = Service(manager, knowledge_factory=lambda spec: self.knowledge, allow_rag_off=True)
        return self._service

    async def _generate(self, params: "GenParams", rag: bool, out: ReplyStream) -> AsyncIterator[str]:
        """The pieces of one answer through Service.prepare/stream; the finished Reply goes to `out`."""
        from serve.engines.base import EngineError, Usage

        svc, usage, parts, finish = self._svc(), Usage(), [], None
        try:
            prep = await svc.prepare(params, rag=rag)
            if prep.refusal is not None:
                parts.append(prep.refusal)
                yield prep.refusal
            else:
                async for d in svc.stream(prep, usage):
                    finish = d.finish_reason or finish
                    if d.text:
                        parts.append(d.text)
                        yield d.text
        except EngineError as e:
            raise GenerationError(str(e), e.code) from None
        text = "".join(parts)
        out._reply = Reply(text.strip() if prep.grounding else text, [Source(**s) for s in prep.sources or []],
                           prep.confidence, prep.grounding,
                           {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}, finish,
                           prep.why)

    def _drop_engines(self) -> None:
        if self._service is not None:
            self._call(self._service.manager.close())
            self._service = None

    def close(self) -> None:
        """Unload the model and stop this assistant's event loop (a later call starts them again)."""
        self._drop_engines()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join()
            self._loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> "Assistant":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Assistant({self.model_id!r}, root={str(self.paths.root)!r})"

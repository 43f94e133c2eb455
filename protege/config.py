"""The pydantic tree for assistant.yaml: the single source of every default.

Each stage reads its own section. Unknown keys are errors (``extra="forbid"``) so a typo never silently falls back to a
default. Relative paths are resolved against the YAML file's folder when the file is loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_BASE = "smollm2-135m-instruct"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StyleMarkers(Section):
    """Machine-checkable traits of the persona's voice, used by `protege eval` for a style-adherence rate."""

    starts_with: str | None = Field(None, description="every reply should begin with this")
    ends_with: str | None = None
    contains: list[str] = Field(default_factory=list)


class PersonaConfig(Section):
    system_prompt: str = Field("You are a helpful assistant.", description="applied to records without one; SYSTEM in the Modelfile")
    style_markers: StyleMarkers = Field(default_factory=StyleMarkers)


class BaseModelConfig(Section):
    """`model`: the embedded default id, a local HF directory, or (with internet) a hub id."""

    model: str = DEFAULT_BASE
    revision: str | None = None
    trust_remote_code: bool = False


class CsvColumns(Section):
    prompt: str = "prompt"
    response: str = "response"
    system: str | None = None


class CleanConfig(Section):
    strip_html: bool = True
    normalize_whitespace: bool = True
    dedup_exact: bool = True
    near_dup_threshold: float | None = Field(0.92, gt=0, le=1, description="embedding cosine; null disables")
    min_response_tokens: int = Field(2, ge=0)
    drop_placeholders: bool = True


class DataConfig(Section):
    files: list[Path] = Field(default_factory=list, description="training files: JSON/JSONL/CSV")
    format: Literal["auto", "alpaca", "sharegpt", "openai", "csv"] = "auto"
    csv: CsvColumns = Field(default_factory=CsvColumns)
    on_error: Literal["fail", "skip"] = Field("fail", description="skip: drop bad records, counted in the report")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held out for val loss, early stopping and eval")
    val_files: list[Path] = Field(default_factory=list)
    max_seq_len: int = Field(512, gt=0, description="tokens; longer conversations are truncated or dropped")
    overlong: Literal["truncate", "drop"] = "truncate"
    clean: CleanConfig = Field(default_factory=CleanConfig)
    seed: int = 42


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1, description=(
        "0, as in LLaMA-Factory and Unsloth: dropout on every LoRA input costs about a third of a CPU step"))
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TrainConfig(Section):
    method: Literal["qlora", "lora", "dora"] = Field("qlora", description="qlora: 4-bit nf4 double-quant base")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="-1: run `epochs`")
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    micro_batch_tokens: int = Field(1024, ge=0, description=(
        "CPU: each batch runs as micro-batches of at most this many padded tokens: the same gradient, bounded "
        "activation memory (~3.4 MB a token for a 135M model in fp32); 0: whole batches"))
    gradient_checkpointing: bool = False
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: bf16 (or fp16) on CUDA, fp32 on CPU")
    packing: bool = Field(True, description="padding-free packed batches; false: length-grouped batches")
    eval_steps: int = Field(20, gt=0)
    save_steps: int = Field(20, gt=0)
    save_total_limit: int = Field(3, gt=0)
    early_stopping_patience: int | None = Field(3, ge=1, description="evals without val-loss improvement; null: off")
    logging_steps: int = Field(5, gt=0)
    report_to: Literal["tensorboard", "swanlab", "none"] = "tensorboard"
    seed: int = 42
    num_threads: int | None = Field(None, gt=0, description="CPU threads for torch; null: all cores")


class EvalConfig(Section):
    prompts_file: Path | None = Field(None, description="JSONL of {prompt, reference?} to compare base vs tuned")
    max_new_tokens: int = Field(64, gt=0)
    max_samples: int = Field(40, gt=0)


QuantType = Literal["q4_0", "q4_1", "q4_k_s", "q4_k_m", "q5_0", "q5_1", "q5_k_s", "q5_k_m", "q6_k", "q8_0"]


class MergeConfig(Section):
    base: Literal["auto", "original", "nf4_roundtrip"] = Field("auto", description="fold the adapter onto the original or an nf4 round-tripped base; auto keeps the lower val loss")


class ParityConfig(Section):
    min_top1: float = Field(0.98, gt=0, le=1)
    positions: int = Field(256, gt=0)
    max_ppl_increase: float = Field(0.10, gt=0, description="q-quant perplexity vs f16, relative; reported")


class ExportConfig(Section):
    outtype: Literal["f16", "bf16", "f32"] = Field("f16", description="the unquantized GGUF, reference for parity")
    quants: list[QuantType] = Field(default_factory=lambda: ["q4_k_m", "q8_0"])
    default_quant: str = Field("q4_k_m", description="what the bare model id `<name>` serves")
    merge: MergeConfig = Field(default_factory=MergeConfig)
    parity: ParityConfig = Field(default_factory=ParityConfig)
    lora_gguf: bool = Field(False, description="also write the adapter alone as a LoRA GGUF")
    lora_pair: bool = Field(False, description="also write the base's own Q4_1 GGUF (embedded base only) beside the "
                                              "LoRA GGUF: a 4-bit-class pair at the merged model's perplexity, for "
                                              "runtimes that load model_path=base + lora_path=adapter")
    num_ctx: int = Field(2048, gt=0, description="PARAMETER num_ctx in the Modelfile")


class ChromaServer(Section):
    host: str | None = None
    port: int = Field(8000, gt=0, lt=65536)


class KnowledgeConfig(Section):
    folder: Path | None = Field(None, description="documents to index (.md .txt .html .pdf .docx), walked recursively")
    collection: str | None = Field(None, description="default: the assistant's name")
    chunk_size: int = Field(200, gt=0, description="tokens of the embedder")
    chunk_overlap: int = Field(30, ge=0)
    top_k: int = Field(4, gt=0)
    min_score: float = Field(0.35, ge=0, le=1, description="refuse when the best final score is below (calibrate it: "
                                                           "`protege rag calibrate`)")
    hybrid: bool = Field(True, description="fuse BM25 with the dense ranking by reciprocal rank (helps codes, names)")
    sentence_vectors: bool = Field(
        True, description="also embed every chunk's sentences one by one: a chunk scores as its best sentence when "
                          "that is closer to the question (one fact of a many-fact chunk); re-run calibrate")
    rerank: str | None = Field(None, description="local cross-encoder path; null: no rerank")
    unknown_name_factor: float = Field(
        0.5, ge=0, le=1,
        description="final scores are multiplied by this when the question names something (a capitalised word, "
                    "acronym or code) that appears nowhere in the documents; 1 disables",
    )
    refusal: str = "I don't know: my documents don't cover that."
    guard: bool = Field(True, description="every number, code and name of a generated answer must be in the retrieved "
                                          "context; else the best source sentences are quoted (grounding: extractive)")
    model_refusal: Literal["quote", "send"] = Field(
        "quote", description="when the model declines a question the gate let through: 'quote' answers with the "
                             "sources' best-matching sentences (the guard's quote), 'send' sends `refusal`")
    off_topic: bool = Field(True, description="refuse a question that nearly repeats one of a bank of general-world "
                                              "questions (weather, trivia, other vendors' products; rag/off_topic.py) "
                                              "and is nearer to it than to the documents, or that is about them only "
                                              "through a place they name (rag/places.py)")
    scope_examples: Path | None = Field(
        None, description="JSONL of {question, source}: examples of what the documents answer (source: the file) and "
                          "leave open (source null), with train_qa's questions; a question nearer an open one than "
                          "every answerable one and the documents is refused (rag/scope.py)")
    synonyms: Path | None = Field(
        None, description="YAML mapping of what customers say to the documents' word for it ('premium support: harbor "
                          "priority'); a question saying the one is also searched with the other (rag/lexicon.py)")
    follow_up_turns: int = Field(2, ge=1, description="a follow-up question is retrieved together with this many "
                                                      "recent user turns")
    train_qa: Path | None = Field(None, description="JSONL of {question, answer, source}: grounded training examples "
                                                    "rendered with the served prompt (source null: a refusal)")
    eval_qa: Path | None = Field(None, description="JSONL of {question, source, answer_contains?, history?}: "
                                                   "`protege build` measures the answers on it (LLM in the loop)")
    train_distractor_fraction: float = Field(
        0.2, ge=0, le=1, description="share of answerable train_qa rows also trained with distractor-only documents "
                                     "and the refusal as the answer")
    train_near_miss_fraction: float = Field(
        0.0, ge=0, le=1, description="share of answerable train_qa rows also trained with their own documents less the "
                                     "lines that state the answer's facts, and the refusal as the answer (near-domain "
                                     "questions: the right document, not the fact)")
    chroma: ChromaServer = Field(default_factory=ChromaServer)
    embed_batch_size: int = Field(64, gt=0)
    max_file_mb: float = Field(50, gt=0, description="knowledge files larger than this are skipped with a warning "
                                                     "(listed in the index report)")

    @model_validator(mode="after")
    def _overlap(self) -> "KnowledgeConfig":
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunk_overlap must be < chunk_size ({self.chunk_size}), got {self.chunk_overlap}")
        return self


_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
FOREVER_S = 1e9  # ~31 years: longer keep_alives mean "forever"


def parse_keep_alive(value: str | int | float) -> float | None:
    """Ollama's keep_alive in seconds: a Go duration ("5m", "1h30m", "30s", "-1m") or a number of seconds (also as a
    string, like OLLAMA_KEEP_ALIVE); 0 unloads at once; negative (or absurdly long): forever, returned as None."""
    if isinstance(value, bool):
        raise ValueError(f"keep_alive must be a duration like '5m' or a number of seconds, got {value!r}")
    if isinstance(value, (int, float)):
        secs = float(value)
    else:
        text = str(value).strip()
        try:
            secs = float(text) if text.lower() not in ("nan", "inf", "-inf", "+inf", "infinity") else float("nan")
        except ValueError:
            body = text.lstrip("+-")
            parts = _DURATION_RE.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"keep_alive must be a duration like '5m', '1h30m', '30s' or a number of seconds, "
                                 f"got {value!r}") from None
            secs = (-1 if text.startswith("-") else 1) * sum(float(n) * _UNITS[u] for n, u in parts)
    if secs != secs:
        raise ValueError(f"keep_alive must be a duration like '5m' or a number of seconds, got {value!r}")
    return None if secs < 0 or secs >= FOREVER_S else secs


def _keep_alive(value: str | int) -> str | int:
    parse_keep_alive(value)
    return value


KeepAlive = Annotated[str | int, AfterValidator(_keep_alive)]


class ServeConfig(Section):
    engine: Literal["llamacpp", "vllm", "fake"] = Field("llamacpp", description="llamacpp: CPU GGUF; vllm: GPU")
    host: str = "127.0.0.1"
    port: int = Field(11435, gt=0, lt=65536)
    quant: str | None = Field(None, description="GGUF to serve: a quant tag, or q4_1-lora for the base + adapter pair "
                                                "of export.lora_pair; null: export.default_quant")
    n_ctx: int = Field(2048, gt=0)
    n_threads: int | None = Field(None, gt=0)
    parallel: int = Field(4, gt=0, description="sequences decoded together")
    prefix_cache: bool = Field(True, description="llama.cpp engine: a request reuses the KV of the longest prompt "
                               "prefix a free slot still holds (persona, grounding rules, earlier turns)")
    batch_invariant: bool = Field(
        False, description="llama.cpp engine: each sequence in its own KV stream, so an answer decoded in a batch is "
                           "bit-identical to the same request alone (8 clients on 2 cores: ~100 instead of ~140 "
                           "tokens/s); off: one unified KV cache")
    max_queue: int = Field(32, gt=0)
    api_keys: list[str] = Field(default_factory=list, description="Bearer keys that open this assistant's models (or "
                                "`sha256:<hex>` digests of keys); any key makes every route but /health need one")
    cors_origins: list[str] = Field(default_factory=list, description="CORS allowlist of origins like "
                                    "https://app.example (\"*\" is refused)")
    max_body_bytes: int = Field(2_000_000, gt=0)
    rag: bool = Field(True, description="answer through the knowledge base when the assistant has one")
    allow_rag_off: bool = Field(False, description="let clients skip retrieval on an assistant with knowledge (\"rag\": "
                                "false, options.rag false, /v1/completions, raw /api/generate); false: 403 rag_required")
    keep_alive: KeepAlive = Field("5m", description="how long a model stays loaded after its last request (Ollama's "
                                  "keep_alive: \"5m\", \"1h\", seconds; 0: unload at once; negative: forever); a "
                                  "request's keep_alive wins")
    max_loaded_models: int = Field(2, gt=0, description="models resident at once: the least recently used idle one is "
                                   "unloaded to make room")
    tensor_parallel_size: int = Field(1, gt=0, description="vLLM engine: GPUs to shard the model across")

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        if any(not k.strip() for k in v):
            raise ValueError("API keys must not be empty")
        return v

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for o in v:
            if "*" in o:
                raise ValueError(f"{o!r} is not allowed: list each origin (e.g. https://app.example); a wildcard "
                                 "would let any web page call the API with the browser's credentials")
            if not re.match(r"^[a-z][a-z0-9+.-]*://[^/\s]+$", o):
                raise ValueError(f"{o!r} is not an origin: expected scheme://host[:port], e.g. https://app.example")
        return v


class AssistantConfig(Section):
    name: str
    persona: PersonaConfig = Field(default_factory=PersonaConfig)
    base: BaseModelConfig = Field(default_factory=BaseModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    knowledge: KnowledgeConfig | None = None
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"must be 2-63 chars of a-z 0-9 . _ - starting with a letter or digit, got {v!r}")
        return v

    def collection_name(self) -> str:
        return (self.knowledge and self.knowledge.collection) or self.name


def resolve_paths(cfg: AssistantConfig, root: Path) -> AssistantConfig:
    """Make every relative path absolute against `root` (the YAML's folder), so artifacts do not depend on cwd."""

    def fix(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = Path(p).expanduser()
        return p if p.is_absolute() else (root / p).resolve()

    cfg.data.files = [fix(p) for p in cfg.data.files]
    cfg.data.val_files = [fix(p) for p in cfg.data.val_files]
    cfg.eval.prompts_file = fix(cfg.eval.prompts_file)
    if cfg.knowledge is not None:
        cfg.knowledge.folder = fix(cfg.knowledge.folder)
        cfg.knowledge.train_qa = fix(cfg.knowledge.train_qa)
        cfg.knowledge.eval_qa = fix(cfg.knowledge.eval_qa)
        if cfg.knowledge.scope_examples is not None:  # assigned, a knob counts as set (stages._NEW_KNOBS)
            cfg.knowledge.scope_examples = fix(cfg.knowledge.scope_examples)
        if cfg.knowledge.synonyms is not None:
            cfg.knowledge.synonyms = fix(cfg.knowledge.synonyms)
        if cfg.knowledge.rerank and not Path(cfg.knowledge.rerank).is_absolute() and (root / cfg.knowledge.rerank).exists():
            cfg.knowledge.rerank = str((root / cfg.knowledge.rerank).resolve())
    base = cfg.base.model
    if base != DEFAULT_BASE and (base.startswith((".", "/", "~")) or (root / base).is_dir()):
        cfg.base.model = str(fix(Path(base)))
    return cfg

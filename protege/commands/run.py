"""`protege run NAME|CONFIG`: an Ollama-style terminal chat (streaming tokens, /bye, /clear, \"\"\" multi-line).

Talks to a running `protege serve` when one answers at --host (default: serve.host:serve.port) and serves the model;
otherwise loads the model in this process (llama.cpp on the CPU) — same persona, same RAG gate, same engine code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import AsyncIterator, Callable

HELP = "Chat with an assistant in the terminal"
COMMANDS = "/bye to quit, /clear to forget the conversation, \"\"\" to start and end a multi-line message"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="assistant name (optionally :quant) or an assistant.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value when MODEL is a file")
    p.add_argument("--host", help="server URL to use (default: http://<serve.host>:<serve.port> when it answers)")
    p.add_argument("--api-key", help="Bearer key for the server (or $PROTEGE_API_KEY)")
    p.add_argument("--local", action="store_true", help="never use a server: load the model in this process")
    p.add_argument("--engine", choices=["llamacpp", "fake"], default=None, help="in-process engine (default llamacpp)")
    p.add_argument("--prompt", help="ask one question, print the answer and exit")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=None, help="default: until the answer ends (or the context)")
    p.add_argument("--no-rag", action="store_true", help="answer without the knowledge base")


Stream = Callable[[list[dict]], AsyncIterator[str]]


def _resolve(args: argparse.Namespace):
    """(model id, config or None) from NAME, NAME:quant or a YAML path."""
    from protege.config_file import load_config

    path = Path(args.model)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        cfg = load_config(path, args.overrides)
        return cfg.name, cfg
    return args.model, None


def _server_stream(base: str, model: str, key: str | None, args) -> Stream:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def stream(messages: list[dict]) -> AsyncIterator[str]:
        body = {"model": model, "messages": messages, "stream": True, "temperature": args.temperature}
        if args.max_tokens:
            body["max_tokens"] = args.max_tokens
        if args.no_rag:
            body["rag"] = False
        async with httpx.AsyncClient(timeout=None, headers=headers) as client:
            async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    raise server_error(r.status_code, r.text)
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    for ch in chunk.get("choices", []):
                        yield ch.get("delta", {}).get("content") or ""
                    if chunk.get("sources"):
                        yield _sources_note(chunk["sources"], chunk.get("confidence"))
    return stream


def server_error(status: int, body: str):
    """The server's OpenAI-shaped error as a GenerationError keeping its code (invalid_api_key, model_not_found...);
    a body that is not that shape (a proxy's page) is quoted."""
    from protege.errors import GenerationError

    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict) and err.get("message"):
        return GenerationError(str(err["message"]), err.get("code"))
    return GenerationError(f"the server answered HTTP {status}: {body.strip()[:200] or '(empty body)'}")


def _sources_note(sources: list[dict], confidence: float | None) -> str:
    paths = ", ".join(dict.fromkeys(s["path"] for s in sources))
    return f"\n[sources: {paths}; confidence {confidence:.2f}]" if paths else ""


def _local_stream(model: str, cfg, args) -> tuple[Stream, Callable[[], None]]:
    from protege.config import ServeConfig
    from serve.engines import engine_factory
    from serve.engines.base import GenParams, Usage
    from serve.registry import Registry
    from serve.service import ModelManager, Service

    serve_cfg = ServeConfig(parallel=1) if cfg is None else cfg.serve.model_copy(update={"parallel": 1})
    registry = Registry([cfg] if cfg else [])
    manager = ModelManager(registry, engine_factory(args.engine or "llamacpp", serve_cfg))
    service = Service(manager, allow_rag_off=True)  # local: the user owns the files; --no-rag is theirs to use

    async def stream(messages: list[dict]) -> AsyncIterator[str]:
        params = GenParams(model=model, messages=list(messages), temperature=args.temperature,
                           max_tokens=args.max_tokens)
        prep = await service.prepare(params, [], rag=not args.no_rag)
        if prep.refusal is not None:
            yield prep.refusal
        else:
            async for d in service.stream(prep, Usage()):
                yield d.text
        if prep.sources:
            yield _sources_note(prep.sources, prep.confidence)

    def close() -> None:
        asyncio.run(manager.close())
    return stream, close


def _find_server(args, cfg) -> str | None:
    if args.local:
        return None
    import httpx

    from protege.config import ServeConfig

    sc = cfg.serve if cfg else ServeConfig()
    base = (args.host or f"http://{sc.host}:{sc.port}").rstrip("/")
    try:
        r = httpx.get(f"{base}/health", timeout=1.0)
        return base if r.status_code == 200 else None
    except httpx.HTTPError:
        if args.host:
            from protege.errors import ProtegeError

            raise ProtegeError(f"no server answers at {base}") from None
        return None


def read_message(read: Callable[[str], str]) -> str | None:
    """One user message; \"\"\" opens and closes a multi-line block. None at end of input."""
    try:
        line = read(">>> ")
    except EOFError:
        return None
    if line.strip().startswith('"""'):
        parts = [line.strip()[3:]]
        while True:
            try:
                more = read("... ")
            except EOFError:
                break
            if more.rstrip().endswith('"""'):
                parts.append(more.rstrip()[:-3])
                break
            parts.append(more)
        return "\n".join(p for p in parts).strip("\n")
    return line


def chat_loop(stream: Stream, console, system_hint: str, read: Callable[[str], str] = input) -> None:
    history: list[dict] = []
    console.print(f"[dim]{system_hint}  ({COMMANDS})[/dim]")
    while True:
        msg = read_message(read)
        if msg is None or msg.strip() in ("/bye", "/exit", "/quit"):
            return
        if msg.strip() == "/clear":
            history.clear()
            console.print("[dim]Cleared session context[/dim]")
            continue
        if not msg.strip():
            continue
        history.append({"role": "user", "content": msg})
        answer = asyncio.run(_print_stream(stream, history, console))
        history.append({"role": "assistant", "content": answer})


async def _print_stream(stream: Stream, messages: list[dict], console, keep_going: bool = True) -> str:
    parts: list[str] = []
    try:
        async for piece in stream(messages):
            parts.append(piece)
            console.out(piece, end="", highlight=False)
            console.file.flush()
    except KeyboardInterrupt:
        pass
    except Exception as e:  # noqa: BLE001 - show the error, keep the chat alive
        if not keep_going:
            from protege.errors import ProtegeError

            if isinstance(e, ProtegeError):
                raise
            raise ProtegeError(str(e)) from None
        console.print(f"\n[red]error:[/red] {e}")
    console.out("")
    return "".join(parts).split("\n[sources:")[0]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(highlight=False)
    model, cfg = _resolve(args)
    base = _find_server(args, cfg)
    close = None
    if base:
        import os

        stream = _server_stream(base, model, args.api_key or os.environ.get("PROTEGE_API_KEY"), args)
        where = f"{model} via {base}"
    else:
        stream, close = _local_stream(model, cfg, args)
        where = f"{model} (in this process)"
    try:
        if args.prompt is not None:
            asyncio.run(_print_stream(stream, [{"role": "user", "content": args.prompt}], console, keep_going=False))
        else:
            chat_loop(stream, console, where)
    finally:
        if close:
            close()
    return 0

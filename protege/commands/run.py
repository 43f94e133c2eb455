"""`protege run NAME|CONFIG`: an Ollama-style terminal chat (streaming tokens, /bye, /clear, \"\"\" multi-line).

Talks to a running `protege serve` when one answers at --host (default: serve.host:serve.port) and serves the model;
otherwise answers in this process through the Python API (`protege.Assistant`, llama.cpp on the CPU): the same
persona, RAG gate and guard as the server.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Iterator

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


# One turn of the chat as it comes: ("text", piece) for the answer, ("note", "[sources: ...]") once after it. The
# note is shown, never kept in the conversation.
Turn = Iterator[tuple[str, str]]
Chat = Callable[[list[dict]], Turn]


def _resolve(args: argparse.Namespace):
    """(model id, config or None) from NAME, NAME:quant or a YAML path."""
    from protege.config_file import load_config

    path = Path(args.model)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        cfg = load_config(path, args.overrides)
        return cfg.name, cfg
    return args.model, None


def _gen(args: argparse.Namespace) -> dict:
    return {"temperature": args.temperature, **({"max_tokens": args.max_tokens} if args.max_tokens else {})}


def _server_chat(base: str, model: str, key: str | None, args) -> Chat:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def chat(messages: list[dict]) -> Turn:
        body = {"model": model, "messages": messages, "stream": True, **_gen(args)}
        if args.no_rag:
            body["rag"] = False
        with httpx.Client(timeout=None, headers=headers) as client:
            with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise server_error(r.status_code, r.text)
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    for ch in chunk.get("choices", []):
                        yield "text", ch.get("delta", {}).get("content") or ""
                    if chunk.get("sources"):
                        yield "note", _sources_note(chunk["sources"], chunk.get("confidence"))
    return chat


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


def _local_chat(model: str, cfg, args) -> tuple[Chat, Callable[[], None]]:
    """In this process through the Python API (protege/api.py): the server's persona, gate and guard."""
    from protege.api import Assistant

    engine = args.engine or "llamacpp"
    assistant = Assistant(cfg, engine=engine) if cfg is not None else Assistant.load(model, engine=engine)

    def chat(messages: list[dict]) -> Turn:
        stream = assistant.chat(messages, stream=True, rag=False if args.no_rag else None, **_gen(args))
        for piece in stream:
            yield "text", piece
        reply = stream.reply
        if reply.sources:
            yield "note", _sources_note([s.to_dict() for s in reply.sources], reply.confidence)
    return chat, assistant.close


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


def chat_loop(chat: Chat, console, system_hint: str, read: Callable[[str], str] = input) -> None:
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
        answer = _print_turn(chat, history, console)
        history.append({"role": "assistant", "content": answer})


def _print_turn(chat: Chat, messages: list[dict], console, keep_going: bool = True) -> str:
    """Print one answer as it streams; returns the answer's text (what goes into the conversation)."""
    parts: list[str] = []
    try:
        for kind, piece in chat(messages):
            if kind == "text":
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
    return "".join(parts)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(highlight=False)
    model, cfg = _resolve(args)
    base = _find_server(args, cfg)
    close = None
    if base:
        import os

        chat = _server_chat(base, model, args.api_key or os.environ.get("PROTEGE_API_KEY"), args)
        where = f"{model} via {base}"
    else:
        chat, close = _local_chat(model, cfg, args)
        where = f"{model} (in this process)"
    try:
        if args.prompt is not None:
            _print_turn(chat, [{"role": "user", "content": args.prompt}], console, keep_going=False)
        else:
            chat_loop(chat, console, where)
    finally:
        if close:
            close()
    return 0

"""`protege serve`: serve assistants over OpenAI- and Ollama-compatible APIs (uvicorn; SIGTERM drains).

API keys: `--api-key`/$PROTEGE_API_KEYS are the server's keys and open every model; each served assistant's own
`serve.api_keys` (from its CONFIG or its built config in $PROTEGE_HOME, however the server is started) open that
assistant's models only (serve/ops.py). Binding an address other than loopback with no key at all is refused unless
`--insecure` is given.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

HELP = "Serve assistants over OpenAI- and Ollama-compatible APIs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("configs", nargs="*", type=Path, metavar="CONFIG",
                   help="assistant.yaml files to serve (besides every built assistant in $PROTEGE_HOME)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a value of every CONFIG, e.g. --set serve.parallel=8")
    p.add_argument("--host", help="bind address (default: serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: serve.port, 11435)")
    p.add_argument("--engine", choices=["llamacpp", "vllm", "fake"], help="default: serve.engine")
    p.add_argument("--api-key", dest="api_keys", action="append", default=[],
                   help="a server key: 'Authorization: Bearer KEY' opens every model (repeatable; also "
                        "$PROTEGE_API_KEYS, comma-separated); each assistant's serve.api_keys open its own models")
    p.add_argument("--insecure", action="store_true",
                   help="allow binding a non-loopback --host with no API key at all (anyone who can reach it can "
                        "use it)")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", default=[], help="allowed CORS origin")
    p.add_argument("--parallel", type=int, help="sequences decoded together (default: serve.parallel)")
    p.add_argument("--n-ctx", type=int, help="context length per sequence (default: serve.n_ctx)")
    p.add_argument("--threads", type=int, help="CPU threads for llama.cpp")
    p.add_argument("--max-queue", type=int, help="requests waiting beyond --parallel before 429")
    p.add_argument("--keep-alive", help="how long an idle model stays loaded: '5m', '30s', 0 unloads at once, "
                   "-1 keeps it (default: serve.keep_alive, 5m)")
    p.add_argument("--max-loaded-models", type=int, help="models resident at once; the least recently used idle one "
                   "is unloaded (default: serve.max_loaded_models)")
    p.add_argument("--no-registry", action="store_true", help="serve only the CONFIGs, not $PROTEGE_HOME's assistants")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


# argparse dest -> ServeConfig field, and the flag named in errors
FLAGS = [("host", "host", "--host"), ("port", "port", "--port"), ("engine", "engine", "--engine"),
         ("parallel", "parallel", "--parallel"), ("n_ctx", "n_ctx", "--n-ctx"), ("threads", "n_threads", "--threads"),
         ("max_queue", "max_queue", "--max-queue"), ("cors_origins", "cors_origins", "--cors-origin"),
         ("keep_alive", "keep_alive", "--keep-alive"), ("max_loaded_models", "max_loaded_models", "--max-loaded-models")]


def serve_config(args: argparse.Namespace, configs: list) -> "object":
    """Server settings: the serve section of the first CONFIG (or the defaults) with command-line flags on top.
    Its `api_keys` are the server's keys (flags and $PROTEGE_API_KEYS only): the first CONFIG's own keys stay its
    own, like every assistant's. A bad value is a one-line error naming the flag, never a traceback."""
    from pydantic import ValidationError

    from protege.config import ServeConfig
    from protege.errors import ConfigError

    data = configs[0].serve.model_dump() if configs else {}
    flag_of = {}
    for dest, key, flag in FLAGS:
        value = getattr(args, dest, None)
        if value not in (None, []):
            data[key], flag_of[key] = value, flag
    data["api_keys"] = [k.strip() for k in args.api_keys + os.environ.get("PROTEGE_API_KEYS", "").split(",")
                        if k.strip()]
    flag_of["api_keys"] = "--api-key/$PROTEGE_API_KEYS"
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            msg = err["msg"].removeprefix("Value error, ")
            got = "" if key == "api_keys" or "got" in msg else f", got {err.get('input')!r}"  # never print a key
            lines.append(f"{flag_of.get(key, f'serve.{key}')}: {msg}{got}")
        raise ConfigError("\n".join(lines)) from None


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, has_keys: bool, insecure: bool) -> None:
    """Refuse to serve an address other than loopback with no API key at all, unless --insecure says so."""
    from protege.errors import ConfigError

    if not has_keys and not is_loopback(host) and not insecure:
        raise ConfigError(f"refusing to serve {host} without an API key: anyone who can reach it could use every "
                          "model. Set a key (--api-key KEY, $PROTEGE_API_KEYS or serve.api_keys in the assistant's "
                          "config), bind 127.0.0.1, or pass --insecure to serve it open anyway.")


def run(args: argparse.Namespace) -> int:
    import logging

    from protege.config_file import load_config
    from protege.errors import ProtegeError, require

    require("fastapi", "serve")
    uvicorn = require("uvicorn", "serve")
    from serve.app import create_app
    from serve.engines import engine_factory
    from serve.registry import Registry

    configs = [load_config(c, args.overrides) for c in args.configs]
    cfg = serve_config(args, configs)
    if cfg.engine == "llamacpp":
        require("llama_cpp", "llamacpp")
    registry = Registry(configs, include_built=not args.no_registry)
    if not registry.specs:
        raise ProtegeError("no assistants to serve: give an assistant.yaml or build one (protege build CONFIG)")
    from serve.ops import KeyRing

    check_exposure(cfg.host, KeyRing(cfg.api_keys, registry).active, args.insecure)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(registry, engine_factory(cfg.engine, cfg), cfg)
    print(f"protege serve: {', '.join(registry.ids())} on http://{cfg.host}:{cfg.port} "
          f"(engine {cfg.engine}, {cfg.parallel} parallel)", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=args.log_level, timeout_graceful_shutdown=30,
                access_log=args.log_level == "debug")
    return 0

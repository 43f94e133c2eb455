"""`protege serve`: serve assistants over OpenAI- and Ollama-compatible APIs (uvicorn; SIGTERM drains)."""

from __future__ import annotations

import argparse
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
                   help="require 'Authorization: Bearer KEY' (repeatable; also $PROTEGE_API_KEYS, comma-separated)")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", default=[], help="allowed CORS origin")
    p.add_argument("--parallel", type=int, help="sequences decoded together (default: serve.parallel)")
    p.add_argument("--n-ctx", type=int, help="context length per sequence (default: serve.n_ctx)")
    p.add_argument("--threads", type=int, help="CPU threads for llama.cpp")
    p.add_argument("--max-queue", type=int, help="requests waiting beyond --parallel before 429")
    p.add_argument("--no-registry", action="store_true", help="serve only the CONFIGs, not $PROTEGE_HOME's assistants")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def serve_config(args: argparse.Namespace, configs: list) -> "object":
    """serve section of the first CONFIG (or the defaults), with command-line flags on top."""
    from protege.config import ServeConfig

    cfg = configs[0].serve.model_copy() if configs else ServeConfig()
    for flag, key in [("host", "host"), ("port", "port"), ("engine", "engine"), ("parallel", "parallel"),
                      ("n_ctx", "n_ctx"), ("threads", "n_threads"), ("max_queue", "max_queue")]:
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg, key, value)
    keys = args.api_keys + [k for k in os.environ.get("PROTEGE_API_KEYS", "").split(",") if k.strip()]
    if keys:
        cfg.api_keys = [k.strip() for k in keys]
    if args.cors_origins:
        cfg.cors_origins = args.cors_origins
    return cfg


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
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(registry, engine_factory(cfg.engine, cfg), cfg)
    print(f"protege serve: {', '.join(registry.ids())} on http://{cfg.host}:{cfg.port} "
          f"(engine {cfg.engine}, {cfg.parallel} parallel)", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=args.log_level, timeout_graceful_shutdown=30,
                access_log=args.log_level == "debug")
    return 0

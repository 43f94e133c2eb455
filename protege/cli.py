"""The one `protege` command. Subcommands live one per module in protege.commands and import their stage lazily,
so `protege --help` stays fast and never imports torch."""

from __future__ import annotations

import argparse
import importlib
import sys

from protege.errors import ProtegeError

# name -> module in protege.commands; each module has HELP, add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "import-base": "import_base",
    "data": "data",
    "train": "train",
    "eval": "eval",
    "export": "export",
    "index": "index",
    "ask": "ask",
    "rag": "rag",
    "serve": "serve",
    "run": "run",
    "build": "build",
    "list": "list",
    "ps": "ps",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protege",
        description="Turn a persona, example conversations and documents into a private assistant that runs offline.",
    )
    parser.add_argument("--version", action="version", version=f"protege {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"protege.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("protege")
    except PackageNotFoundError:
        return "dev"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except ProtegeError as e:
        print(f"protege {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"protege {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk is the user's to fix: one line, not a traceback (stages write atomically)
        from protege.errors import disk_full

        message = disk_full(e)
        if message is None:
            raise
        print(f"protege {args.command}: error: {message}", file=sys.stderr)
        return 1
    finally:
        from protege.lock import release_all

        release_all()  # the per-assistant lock taken by commands._common.load


if __name__ == "__main__":
    sys.exit(main())

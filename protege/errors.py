"""User-facing errors: the CLI prints their message on one line (no traceback) and exits with their code."""

from __future__ import annotations


class ProtegeError(Exception):
    """A problem with the user's input or environment; `exit_code` is what the CLI returns."""

    exit_code = 1


class ConfigError(ProtegeError):
    """assistant.yaml or a --set override is invalid (usage error: exit 2, like argparse)."""

    exit_code = 2


class DataError(ProtegeError):
    """A training/eval data file is malformed; the message names file:line and the problem."""

    exit_code = 2


class MissingExtraError(ProtegeError):
    """An optional dependency is not installed; the message names the extra to install."""

    exit_code = 3

    def __init__(self, module: str, extra: str):
        super().__init__(f"{module} is not installed: pip install 'protege[{extra}]'")
        self.module, self.extra = module, extra


def require(module: str, extra: str):
    """Import an optional dependency or fail with the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(module, extra) from None

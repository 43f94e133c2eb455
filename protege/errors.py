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


class AssistantBusy(ProtegeError):
    """Another protege process is writing this assistant (build/train/export/index); exit 75 (EX_TEMPFAIL: retry)."""

    exit_code = 75

    def __init__(self, name: str, lock_file: str, pid: int | None):
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"assistant {name!r} is busy: {who} holds {lock_file}; wait for that run to finish "
                         f"(the lock goes away with the process)")
        self.name, self.lock_file, self.pid = name, lock_file, pid


class NoAdapterError(ProtegeError):
    """The config trains an adapter but none is on disk: exporting would silently ship the base model."""

    exit_code = 1


def disk_full(exc: BaseException) -> str | None:
    """A one-line message when `exc` (or what caused it) is a full disk or quota, else None. Libraries wrap ENOSPC
    in their own types (torch's RuntimeError, sqlite's errors), so the chain and the text are both looked at."""
    import errno

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {e.filename}" if e.filename else ""
            return f"no space left on device{where}; free some space and run it again"
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return f"no space left on device ({type(e).__name__}: {str(e)[:200]}); free some space and run it again"
        e = e.__cause__ or e.__context__
    return None


class AssistantNotFound(ProtegeError):
    """No built assistant of that name: the message names it and the registry searched, since a wrong $PROTEGE_HOME
    is the usual cause."""

    exit_code = 1

    def __init__(self, name: str, home: str, known: list[str] | None = None):
        built = f"built there: {', '.join(known)}" if known else "none built there yet"
        super().__init__(f"no assistant {name!r} in $PROTEGE_HOME={home} ({built}); "
                         f"build it with `protege build CONFIG`")
        self.name, self.home = name, home


class NoKnowledgeError(ProtegeError):
    """A RAG call (ask, retrieve, index) on an assistant whose config has no knowledge section."""

    exit_code = 1


class GenerationError(ProtegeError):
    """The engine turned a request down (context too long, unsupported parameter, no weights to load); `code` is the
    server's error code for the same case, so API and HTTP callers can branch on one vocabulary."""

    exit_code = 1

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code

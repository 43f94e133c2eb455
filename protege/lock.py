"""One writer per assistant: the commands that write an assistant's folder (build, train, export, index, data, eval,
rag) take an exclusive flock on `<assistant>/.lock`, so a second run fails at once with AssistantBusy instead of its
crash recovery deleting the first run's staging folders.

Why flock: the kernel drops it when the holder dies (kill -9 included), so a stale lock file never blocks anyone and
no pid-liveness guessing is needed. The holder's pid is written into the file only to name it in the loser's error;
the file is emptied on release so an idle assistant folder stays byte-identical across runs. The lock is re-entrant
within a process (`protege build` holds it while each stage takes it again) and is not shared with forked children
beyond what flock semantics give (the descriptor is close-on-exec, so converters run as subprocesses do not keep it).
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from protege.paths import AssistantPaths

LOCK_NAME = ".lock"

_mutex = threading.Lock()
_held: dict[str, list[int]] = {}  # resolved assistant root -> [fd, depth]
_command_scope: list[AssistantPaths] = []  # taken by hold(), released by release_all() when the CLI command ends


def lock_file(paths: AssistantPaths) -> Path:
    return paths.root / LOCK_NAME


def _key(paths: AssistantPaths) -> str:
    return os.path.realpath(paths.root)


def _holder_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def acquire(paths: AssistantPaths) -> None:
    """Take the lock now or raise AssistantBusy (never waits: a build can last an hour)."""
    key = _key(paths)
    with _mutex:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
            return
        paths.root.mkdir(parents=True, exist_ok=True)
        path = lock_file(paths)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from protege.errors import AssistantBusy  # here, not at the top: a long build that imported the
            # previous protege.errors before an upgrade still imports this module when its later stages start

            pid = _holder_pid(fd)
            os.close(fd)
            raise AssistantBusy(paths.name, str(path), pid) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the pid only names the holder in errors, the flock is what counts
            pass
        _held[key] = [fd, 1]


def release(paths: AssistantPaths) -> None:
    """Undo one acquire(); the last one empties the file and drops the flock."""
    key = _key(paths)
    with _mutex:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[key]
        fd = entry[0]
        try:
            os.ftruncate(fd, 0)  # still locked here: no other process can have written its pid yet
        finally:
            os.close(fd)  # closing the last descriptor drops the flock


def held(paths: AssistantPaths) -> bool:
    """Whether this process holds the assistant's lock (recovery code asserts it)."""
    with _mutex:
        return _key(paths) in _held


@contextmanager
def assistant_lock(paths: AssistantPaths) -> Iterator[None]:
    """`with assistant_lock(paths):` around anything that writes or recovers the assistant's folder."""
    acquire(paths)
    try:
        yield
    finally:
        release(paths)


def hold(paths: AssistantPaths) -> None:
    """Take the lock for the rest of the CLI command (protege.cli.main calls release_all() when it ends)."""
    acquire(paths)
    _command_scope.append(paths)


def release_all() -> None:
    """Release what hold() took, newest first."""
    while _command_scope:
        release(_command_scope.pop())

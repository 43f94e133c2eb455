"""Loopback helpers for tests that start real servers (protege serve, chroma run, an app under uvicorn)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it dies or never gets there."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not become healthy in {timeout:.0f} s: {log.read_text()[-2000:]}")


@contextmanager
def protege_serve(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Iterator[str]:
    """A real `protege serve ARGS` on a free loopback port with PROTEGE_HOME=home; yields its base URL. On exit it is
    sent SIGTERM and must drain and stop cleanly (uvicorn re-raises the signal: exit -15, or 0)."""
    repo = Path(__file__).resolve().parent.parent
    port = free_port()
    log_path = home / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "protege", "serve", *args, "--port", str(port)], cwd=repo,
                                env={**os.environ, "PROTEGE_HOME": str(home), **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(proc, f"{base}/health", log_path, timeout=timeout)
            yield base
        finally:
            proc.terminate()
            code = proc.wait(timeout=40)
    assert code in (0, -15), log_path.read_text()[-2000:]


@contextmanager
def app_server(app: Any, timeout: float = 20) -> Iterator[str]:
    """`app` under a real uvicorn in a thread, on a free loopback port (real HTTP, real streaming, the app's
    lifespan); yields its base URL and stops it on exit."""
    import uvicorn

    port = free_port()
    # log_config=None: uvicorn's dictConfig would shut down every existing logging handler, and absl's (imported by
    # rouge-score in an earlier test) then closes the stderr it saw at import: pytest's capture file for the session
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + timeout
        while not server.started:
            assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)

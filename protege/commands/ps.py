"""`protege ps`: the models a running `protege serve` has loaded now (its /api/ps), like `ollama ps`."""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone

HELP = "List the models a running server has loaded, and until when"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="server address or URL (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=11435, help="server port (default 11435)")
    p.add_argument("--api-key", help="Bearer key for the server (or $PROTEGE_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the server's JSON")


def base_url(host: str, port: int) -> str:
    if host.startswith(("http://", "https://")):
        return host.rstrip("/")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def fetch_ps(url: str, api_key: str | None, timeout: float = 10.0) -> list[dict]:
    import urllib.error
    import urllib.request

    from protege.errors import ProtegeError

    req = urllib.request.Request(f"{url}/api/ps", headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())["models"]
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())["error"]  # Ollama's shape on /api: {"error": "<message>"}
            msg = err if isinstance(err, str) else err["message"]
        except Exception:  # noqa: BLE001 - not our server's error shape
            msg = e.reason
        raise ProtegeError(f"{url}/api/ps answered {e.code}: {msg}") from None
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        reason = getattr(e, "reason", e)
        raise ProtegeError(f"no protege server answers at {url} ({reason}); start one with: protege serve") from None


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1000
    return f"{n} B"


def until(expires_at: str, now: datetime | None = None) -> str:
    """`ollama ps`'s UNTIL column: "4 minutes from now", "Forever", "Stopping..."."""
    try:
        t = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return expires_at or "-"
    now = now or datetime.now(timezone.utc)
    left = (t - now).total_seconds()
    if t.year >= 9999 or left > 100 * 365 * 86400:
        return "Forever"
    if left <= 0:
        return "Stopping..."
    for secs, name in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if left >= secs or secs == 1:
            k = max(1, int(left // secs))
            return f"{k} {name}{'s' if k != 1 else ''} from now"
    return "-"


def table(models: list[dict], now: datetime | None = None) -> str:
    rows = [("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")]
    for m in models:
        gpu = m.get("size_vram", 0) and m.get("size", 0)
        rows.append((m.get("name", ""), str(m.get("digest", ""))[:12], human_size(int(m.get("size", 0))),
                     "100% GPU" if gpu else "100% CPU", str(m.get("context_length", "") or "-"),
                     until(m.get("expires_at", ""), now)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("    ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def run(args: argparse.Namespace) -> int:
    key = args.api_key or os.environ.get("PROTEGE_API_KEY") or None
    models = fetch_ps(base_url(args.host, args.port), key)
    print(json.dumps({"models": models}, indent=2) if args.json else table(models))
    return 0

"""Soak: N concurrent clients against a real `protege serve` (llama.cpp engine, loopback) for minutes.

    make soak          # or: .venv/bin/python bench/soak.py [--duration 300] [--clients 16] [--parallel 4] [--keep]

In a temporary PROTEGE_HOME (never ~/.protege) it writes two assistants on the embedded base (no training):
`soak-plain` (no knowledge) and `soak-kb` (examples/captain-byte/knowledge, indexed with `protege index`), starts
`protege serve` on 127.0.0.1 with both (--max-queue = 2 x clients: nobody should be refused; a 429 anyway counts
as "busy", not as an error: a leaked slot shows in the end-of-run check), and runs the clients. Each loops over a mix:
  * cross-talk probes: a raw prompt of the client's own code word 20 times (/v1/completions or raw /api/generate,
    greedy, 16 tokens): the answer must hold its own word and none of the other clients' words;
  * chats, streaming or not, on both APIs; RAG chats to soak-kb (a 200 that carries `sources`);
  * client disconnects (a stream closed after a few chunks, a non-streaming request with a sub-second read timeout);
  * over-long inputs: the expected answer is a 400 `context_length_exceeded`.
Server RSS is sampled every 2 s: "start" after the warm-up (min(30 s, 10% of the duration), after a pre-warm of every
request kind), "end" after the clients finished; then every slot must be free (/health `in_flight`, /metrics
`protege_requests_in_flight` and `protege_queue_depth` at 0 within a 15 s settle). Prints requests, p50/p95 latency
and outcomes by kind, errors by kind, RSS start/end and PASS/FAIL: PASS needs zero 5xx, zero cross-talk, RSS end <=
1.10 x start, every slot free and no other error (unexpected 4xx, connection errors, timeouts of requests meant to
finish, broken streams, RAG answers without sources). Exit 1 on FAIL. Appends the figures to bench/results/soak.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx

REPO = Path(__file__).resolve().parents[1]
KNOWLEDGE = REPO / "examples" / "captain-byte" / "knowledge"
PLAIN, KB = "soak-plain", "soak-kb"
# 16 code words the embedded base repeats when prompted with the word 20 times (greedy, checked solo)
WORDS = ["violin", "tomato", "glacier", "pyramid", "cactus", "harbor", "mango", "quartz",
         "walrus", "copper", "orchid", "cherry", "pencil", "rocket", "guitar", "dragon"]
CHATS = ["What is the capital of France?", "Name three colors.", "Tell me a joke.", "What is Python?",
         "Why is the sky blue?", "Describe a cat in one sentence.", "What is 2+2?", "Say hello."]
RAG_QUESTIONS = ["How much does the Sloop server cost each month?", "What's the region code for the Frankfurt data "
                 "center?", "Which plan gives me cores that aren't shared with other customers?",
                 "What discount do charities and public schools receive?"]
MIX = {"xtalk_v1": 3, "xtalk_ollama": 3, **dict.fromkeys(  # kind -> weight in the random mix
    ["chat_v1", "chat_v1_stream", "chat_ollama", "chat_ollama_stream", "rag_v1", "rag_v1_stream", "rag_ollama",
     "drop_stream_v1", "drop_stream_ollama", "drop_timeout", "overlong_v1", "overlong_ollama"], 1)}
EXPECTED = {"ok", "busy", "disconnect", "context_exceeded"}  # outcomes that are not errors
ERRORS = ["5xx", "cross_talk", "unexpected_4xx", "connection", "timeout", "stream_error", "bad_answer"]
Outcome = tuple[str, str]  # (category, detail)


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.outcomes: dict[str, Counter] = defaultdict(Counter)
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.xtalk_foreign = self.xtalk_missing = self.xtalk_total = self.xtalk_vs_solo = 0

    def add(self, kind: str, category: str, detail: str, seconds: float | None) -> None:
        self.outcomes[kind][category] += 1
        if seconds is not None:
            self.latency[kind].append(seconds)
        if category not in EXPECTED and len(self.examples[category]) < 5:
            self.examples[category].append(f"{kind}: {detail[:300]}")

    def total(self, category: str) -> int:
        return sum(c[category] for c in self.outcomes.values())


def status_outcome(r: httpx.Response) -> Outcome | None:
    """None for a 200; else the outcome category of the status."""
    if r.status_code == 200:
        return None
    cat = "5xx" if r.status_code >= 500 else "busy" if r.status_code == 429 else "unexpected_4xx"
    return cat, f"HTTP {r.status_code}: {r.text[:200]}"


def xtalk_outcome(st: Stats, word: str, text: str, solo: str | None) -> Outcome:
    found = set(re.findall(r"[a-z]+", text.lower()))
    foreign = sorted(found & (set(WORDS) - {word}))
    st.xtalk_total, st.xtalk_vs_solo = st.xtalk_total + 1, st.xtalk_vs_solo + (solo is not None and text != solo)
    st.xtalk_foreign, st.xtalk_missing = st.xtalk_foreign + bool(foreign), st.xtalk_missing + (word not in found)
    if foreign or word not in found:
        return "cross_talk", f"{word!r}: foreign {foreign} in {text!r}" if foreign else f"{word!r} missing: {text!r}"
    return "ok", ""


async def xtalk_text(c: httpx.AsyncClient, api: str, word: str) -> tuple[httpx.Response, str]:
    prompt = " ".join([word] * 20)
    if api == "v1":
        r = await c.post("/v1/completions", json={"model": PLAIN, "prompt": prompt, "max_tokens": 16,
                                                  "temperature": 0})
        return r, (r.json()["choices"][0]["text"] if r.status_code == 200 else "")
    r = await c.post("/api/generate", json={"model": PLAIN, "prompt": prompt, "raw": True, "stream": False,
                                            "options": {"temperature": 0, "num_predict": 16}})
    return r, (r.json()["response"] if r.status_code == 200 else "")


def chat_body(api: str, model: str, content: str, stream: bool, max_tokens: int) -> tuple[str, dict]:
    msgs = [{"role": "user", "content": content}]
    if api == "v1":
        return "/v1/chat/completions", {"model": model, "messages": msgs, "stream": stream, "max_tokens": max_tokens,
                                        "temperature": 0}
    return "/api/chat", {"model": model, "messages": msgs, "stream": stream,
                         "options": {"temperature": 0, "num_predict": max_tokens}}


async def read_stream(c: httpx.AsyncClient, api: str, path: str, body: dict, stop_after: int | None = None) -> Outcome:
    """A streamed answer read to its end (or closed after `stop_after` chunks: a client disconnect)."""
    chunks, done, sources = 0, False, None
    async with c.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return status_outcome(r) or ("ok", "")
        async for line in r.aiter_lines():
            done = done or line == "data: [DONE]"
            if not line.strip() or line == "data: [DONE]" or (api == "v1" and not line.startswith("data: ")):
                continue
            d = json.loads(line.removeprefix("data: "))
            if "error" in d:
                return "stream_error", f"error chunk {line[:200]}"
            sources = d.get("sources", sources)
            done = done or d.get("done") is True
            chunks += 1
            if stop_after is not None and chunks >= stop_after:
                return "disconnect", ""  # leaving the block closes the connection mid-stream
    if not done:
        return "stream_error", f"stream ended without its final chunk after {chunks} chunks"
    if body["model"] == KB and stop_after is None and not sources:
        return "bad_answer", "RAG stream without sources"
    return "ok", ""


async def do_op(kind: str, c: httpx.AsyncClient, rnd: random.Random, word: str, st: Stats,
                solo: dict[str, str], n_ctx: int) -> Outcome:
    api = "ollama" if "ollama" in kind else "v1"
    if kind.startswith("xtalk"):
        r, text = await xtalk_text(c, api, word)
        return status_outcome(r) or xtalk_outcome(st, word, text, solo.get(word))
    if kind.startswith("chat") or kind.startswith("rag"):
        model, q = (KB, rnd.choice(RAG_QUESTIONS)) if kind.startswith("rag") else (PLAIN, rnd.choice(CHATS))
        path, body = chat_body(api, model, q, kind.endswith("stream"), 48)
        if body["stream"]:
            return await read_stream(c, api, path, body)
        r = await c.post(path, json=body)
        if (bad := status_outcome(r)) is not None:
            return bad
        if model == KB and not r.json().get("sources"):
            return "bad_answer", f"RAG answer without sources: {r.text[:200]}"
        return "ok", ""
    if kind.startswith("drop_stream"):
        path, body = chat_body(api, rnd.choice([PLAIN, KB]), rnd.choice(CHATS + RAG_QUESTIONS), True, 64)
        return await read_stream(c, api, path, body, stop_after=rnd.randint(1, 4))
    if kind == "drop_timeout":
        path, body = chat_body(rnd.choice(["v1", "ollama"]), PLAIN, rnd.choice(CHATS), False, 64)
        try:
            r = await c.post(path, json=body, timeout=httpx.Timeout(180, read=rnd.uniform(0.1, 1.0)))
        except httpx.ReadTimeout:
            return "disconnect", ""
        return status_outcome(r) or ("ok", "")
    # over-long: a message longer than the whole context (to soak-plain: soak-kb refuses it by retrieval first)
    path, body = chat_body(api, PLAIN, "lorem ipsum " * n_ctx, False, 16)
    r = await c.post(path, json=body)
    if r.status_code == 400 and '"context_length_exceeded"' in r.text:  # the code, in /v1's error shape and /api's
        return "context_exceeded", ""
    return status_outcome(r) or ("unexpected_4xx", f"over-long input answered 200: {r.text[:200]}")


async def timed(st: Stats, kind: str, fn: Callable[[], Awaitable[Outcome]]) -> None:
    t0 = time.perf_counter()
    try:
        category, detail = await fn()
    except httpx.TimeoutException as e:
        st.add(kind, "timeout", repr(e), None)
    except httpx.TransportError as e:
        st.add(kind, "connection", repr(e), None)
    except (ValueError, KeyError, IndexError, TypeError) as e:  # a 200 whose body is not what the API promises
        st.add(kind, "bad_answer", repr(e), None)
    else:
        st.add(kind, category, detail, time.perf_counter() - t0)


async def client_loop(i: int, c: httpx.AsyncClient, end: float, st: Stats, solo: dict, n_ctx: int,
                      seed: int) -> None:
    rnd = random.Random(seed * 1000 + i)
    kinds, weights = list(MIX), list(MIX.values())
    while time.monotonic() < end:
        kind = rnd.choices(kinds, weights)[0]
        await timed(st, kind, lambda: do_op(kind, c, rnd, WORDS[i % len(WORDS)], st, solo, n_ctx))


def server_rss(pid: int) -> int:
    """Resident bytes of the server process and its children."""
    try:
        import psutil
    except ImportError:
        return next(int(x.split()[1]) * 1024 for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if x.startswith("VmRSS:"))
    p = psutil.Process(pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])


async def slots_free(c: httpx.AsyncClient, settle_s: float = 15.0) -> tuple[bool, dict[str, float]]:
    """Every admission slot free: /health in_flight and the /metrics gauges at 0 (polled for `settle_s`)."""
    deadline = time.monotonic() + settle_s
    while True:
        seen = {"health_in_flight": (await c.get("/health")).json().get("in_flight", -1)}
        text = (await c.get("/metrics")).text
        for name in ("protege_requests_in_flight", "protege_queue_depth"):
            seen[name] = float(m.group(1)) if (m := re.search(rf"^{name} (\S+)$", text, re.M)) else -1.0
        if all(v == 0 for v in seen.values()) or time.monotonic() > deadline:
            return all(v == 0 for v in seen.values()), seen
        await asyncio.sleep(1.0)


async def soak(base: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    st = Stats()
    limits = httpx.Limits(max_connections=args.clients * 2 + 4, max_keepalive_connections=args.clients * 2)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as c:
        solo: dict[str, str] = {}
        for w in WORDS[:args.clients]:  # solo answers (nothing else running): the reference for the batched ones
            r, solo[w] = await xtalk_text(c, "v1", w)
            if r.status_code != 200 or w not in solo[w].lower():
                print(f"warning: solo probe {w!r} -> {r.status_code} {solo[w]!r}", flush=True)
        tw = time.monotonic()  # requests/s counts the pre-warm's requests and time too
        for kind in MIX:  # every kind once before the clock (loads the embedder, Chroma, the guard); counted too
            await timed(st, kind, lambda: do_op(kind, c, random.Random(0), WORDS[0], st, solo, args.n_ctx))
        print(f"pre-warm: {dict(sum(st.outcomes.values(), Counter()))} {dict(st.examples)}", flush=True)
        samples: list[tuple[float, int]] = []
        t0 = time.monotonic()

        async def sample() -> None:
            while True:
                samples.append((time.monotonic() - t0, server_rss(pid)))
                await asyncio.sleep(2.0)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(client_loop(i, c, t0 + args.duration, st, solo, args.n_ctx, args.seed)
                               for i in range(args.clients)))
        wall = time.monotonic() - tw
        free, gauges = await slots_free(c)
        sampler.cancel()
        samples.append((time.monotonic() - t0, server_rss(pid)))
    warm = min(30.0, 0.1 * args.duration)
    start_rss = next((b for t, b in samples if t >= warm), samples[-1][1])
    return {"stats": st, "wall": wall, "free": free, "gauges": gauges, "rss_start": start_rss,
            "rss_end": samples[-1][1], "rss_max": max(b for _, b in samples), "warmup_s": warm}


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else (xs[0] if xs else 0.0)


def report(res: dict[str, Any]) -> dict[str, Any]:
    st: Stats = res["stats"]
    print(f"\n{'kind':<20}{'requests':>9}{'p50 s':>8}{'p95 s':>8}  outcomes")
    by_kind = {}
    for kind in MIX:
        n, lat = sum(st.outcomes[kind].values()), st.latency[kind]
        by_kind[kind] = {"requests": n, "p50_s": round(pct(lat, 50), 3), "p95_s": round(pct(lat, 95), 3),
                         "outcomes": dict(st.outcomes[kind])}
        print(f"{kind:<20}{n:>9}{pct(lat, 50):>8.2f}{pct(lat, 95):>8.2f}  {dict(st.outcomes[kind])}")
    all_lat = [x for v in st.latency.values() for x in v]
    total = sum(v["requests"] for v in by_kind.values())
    print(f"{'all':<20}{total:>9}{pct(all_lat, 50):>8.2f}{pct(all_lat, 95):>8.2f}  "
          f"{total / res['wall']:.2f} requests/s over {res['wall']:.0f} s")
    errors = {e: st.total(e) for e in ERRORS}
    print("errors: " + " ".join(f"{k}={v}" for k, v in errors.items())
          + f"  (cross-talk: foreign word {st.xtalk_foreign}, own word missing {st.xtalk_missing}, "
            f"of {st.xtalk_total} probes)")
    print(f"expected: context_length_exceeded={st.total('context_exceeded')} disconnects={st.total('disconnect')} "
          f"busy_429={st.total('busy')}")
    print(f"info: cross-talk answers differing from their word's solo answer: {st.xtalk_vs_solo}/{st.xtalk_total}")
    print("".join(f"  {cat}: {e}\n" for cat, ex in st.examples.items() for e in ex), end="")
    mib, ratio = 1024 * 1024, res["rss_end"] / res["rss_start"] if res["rss_start"] else float("inf")
    print(f"RSS: start {res['rss_start'] / mib:.1f} MiB (after {res['warmup_s']:.0f} s warm-up), end "
          f"{res['rss_end'] / mib:.1f} MiB, ratio {ratio:.3f}, max {res['rss_max'] / mib:.1f} MiB")
    print(f"slots free: {'yes' if res['free'] else 'no'} {res['gauges']}")
    reasons = [f"{v} {k}" for k, v in errors.items() if v]
    for bad, why in ((ratio > 1.10, f"RSS grew {100 * (ratio - 1):.1f}% (> 10%)"), (total == 0, "no requests"),
                     (not res["free"], f"slots not free at the end: {res['gauges']}")):
        reasons += [why] if bad else []
    verdict = "PASS" if not reasons else "FAIL"
    print(f"{verdict}" + (": " + "; ".join(reasons) if reasons else ": zero 5xx, zero cross-talk, RSS within 10%, "
                                                                       "all slots free"))
    return {"requests": total, "requests_per_s": round(total / res["wall"], 3), "wall_s": round(res["wall"], 1),
            "p50_s": round(pct(all_lat, 50), 3), "p95_s": round(pct(all_lat, 95), 3), "by_kind": by_kind,
            "errors": errors, "cross_talk_probes": st.xtalk_total, "cross_talk_differs_from_solo": st.xtalk_vs_solo,
            "rss_start_mib": round(res["rss_start"] / mib, 1), "rss_end_mib": round(res["rss_end"] / mib, 1),
            "rss_max_mib": round(res["rss_max"] / mib, 1), "rss_ratio": round(ratio, 4),
            "slots_free": res["free"], "gauges": res["gauges"], "verdict": verdict, "reasons": reasons}


def setup(tmp: Path, env: dict[str, str]) -> list[Path]:
    """Two assistant configs on the embedded base; the knowledge one indexed."""
    plain, kb = tmp / f"{PLAIN}.yaml", tmp / f"{KB}.yaml"
    plain.write_text(f"name: {PLAIN}\npersona:\n  system_prompt: You are a concise, helpful assistant.\n"
                     "serve:\n  engine: llamacpp\n")
    kb.write_text(f"name: {KB}\npersona:\n  system_prompt: You are the support assistant of Byte Harbor Cloud.\n"
                  f"knowledge:\n  folder: {json.dumps(str(KNOWLEDGE.resolve()))}\n  top_k: 3\n"
                  "serve:\n  engine: llamacpp\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "protege", "index", str(kb)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=1800)
    if r.returncode:
        raise RuntimeError(f"protege index failed ({r.returncode}): {(r.stdout + r.stderr)[-3000:]}")
    print(f"indexed {KNOWLEDGE.name} in {time.monotonic() - t0:.0f} s", flush=True)
    return [plain, kb]


def start_server(configs: list[Path], port: int, args: argparse.Namespace, env: dict[str, str],
                 log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "protege", "serve", *map(str, configs), "--no-registry", "--engine", "llamacpp",
           "--host", "127.0.0.1", "--port", str(port), "--parallel", str(args.parallel), "--n-ctx", str(args.n_ctx),
           "--max-queue", str(2 * args.clients), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"protege serve did not become healthy (exit {proc.wait()}): {log.read_text()[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300, help="seconds of load (default 300)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16, at most 16)")
    ap.add_argument("--parallel", type=int, default=4, help="server decoding slots (default 4)")
    ap.add_argument("--port", type=int, help="server port (default: a free one)")
    ap.add_argument("--n-ctx", type=int, default=2048, help="context per sequence (default 2048)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, index, server log)")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "soak.jsonl",
                    help="JSONL file the figures are appended to ('-': none)")
    args = ap.parse_args()
    if not 1 <= args.clients <= len(WORDS):
        ap.error(f"--clients must be 1..{len(WORDS)} (one distinct code word each)")
    with socket.socket() as sock:  # a free port
        sock.bind(("127.0.0.1", 0))
        port = args.port or sock.getsockname()[1]
    tmp, load0 = Path(tempfile.mkdtemp(prefix="protege-soak-")), os.getloadavg()
    env = {**os.environ, "PROTEGE_HOME": str(tmp / "home"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PROTEGE_API_KEYS", None)  # a loopback server without keys
    print(f"soak: {args.clients} clients, {args.duration:.0f} s, --parallel {args.parallel}, --max-queue "
          f"{2 * args.clients}, llama.cpp on 127.0.0.1:{port}; {os.cpu_count()} CPUs, load "
          f"{' '.join(f'{x:.2f}' for x in load0)}; temp {tmp}", flush=True)
    proc = None
    try:
        configs = setup(tmp, env)
        proc = start_server(configs, port, args, env, tmp / "serve.log")
        res = asyncio.run(soak(f"http://127.0.0.1:{port}", proc.pid, args))
        if proc.poll() is not None:
            res["free"] = False
            print(f"the server died (exit {proc.returncode})")
        figures = report(res)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: uvicorn drains
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log = tmp / "serve.log"
        if log.is_file() and ("Traceback" in (text := log.read_text()) or " ERROR " in text):
            print(f"server log has errors ({log}):\n{text[-3000:]}")
        print(f"kept {tmp}") if args.keep else shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"load at the end: {' '.join(f'{x:.2f}' for x in load1)}")
    if str(args.results) != "-":
        line = {"bench": "soak", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_start": load0,
                            "load_avg_end": load1},
                "clients": args.clients, "duration_s": args.duration, "parallel": args.parallel,
                "n_ctx": args.n_ctx, "seed": args.seed, **figures}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"wrote {args.results}")
    return 0 if figures["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

"""Serving throughput: aggregate completion tokens/s at 1 and N concurrent streaming clients for

  * `protege serve` (continuous batching over llama.cpp's multi-sequence batch API),
  * `python -m llama_cpp.server` (llama-cpp-python's own server: one request at a time), a subprocess on loopback,
  * raw llama-cpp-python in this process (`Llama.create_chat_completion(stream=True)`, 1 client: the floor for
    per-request overhead),

all on the same GGUF (the embedded SmolLM2-135M-Instruct by default), same prompts, temperature 0, in the same run.
Prints the ratios (goal: >= 2x llama_cpp.server at N clients; <= 5% overhead vs raw at 1 client) and appends one JSON
line to bench/results/serve_throughput.jsonl. Only loopback traffic. No absolute time is asserted anywhere.

    .venv/bin/python bench/serve_throughput.py                  # 8 clients, 64 tokens each
    .venv/bin/python bench/serve_throughput.py --clients 4 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTIONS = ["What is the capital of France?", "Name three colors.", "Explain what a CPU does.", "Tell me a joke.",
             "What is Python?", "Who wrote Hamlet?", "What is water made of?", "Describe a cat.",
             "Why is the sky blue?", "What is a prime number?", "How do plants grow?", "What is the moon?"]
SYSTEM = "You are a concise, helpful assistant."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], base: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited: {log.read_text()[-2000:]}")
        for path in ("/health", "/v1/models"):
            try:
                if httpx.get(base + path, timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not come up")


async def stream_one(client: httpx.AsyncClient, base: str, model: str, q: str, max_tokens: int) -> int:
    """One streaming chat; returns the number of content chunks (one per generated token on both servers)."""
    body = {"model": model, "stream": True, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]}
    n = 0
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for ch in json.loads(line[6:]).get("choices", []):
                    if ch.get("delta", {}).get("content"):
                        n += 1
    return n


async def run_clients(base: str, model: str, clients: int, rounds: int, max_tokens: int) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:
        await stream_one(client, base, model, "Hi", 4)  # warm-up
        t0 = time.perf_counter()
        tokens = 0
        for r in range(rounds):
            qs = [QUESTIONS[(r * clients + i) % len(QUESTIONS)] for i in range(clients)]
            tokens += sum(await asyncio.gather(*[stream_one(client, base, model, q, max_tokens) for q in qs]))
        dt = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": round(dt, 3), "tok_s": round(tokens / dt, 2)}


def run_raw(llm, rounds: int, max_tokens: int) -> dict:
    """llama-cpp-python in this process, no HTTP: the floor for per-request overhead."""
    list(llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4, stream=True))
    t0 = time.perf_counter()
    tokens = 0
    for r in range(rounds):
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[r % len(QUESTIONS)]}]
        for chunk in llm.create_chat_completion(msgs, max_tokens=max_tokens, temperature=0, stream=True):
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                tokens += 1
    dt = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": round(dt, 3), "tok_s": round(tokens / dt, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, help="default: the embedded SmolLM2-135M-Instruct GGUF")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--single-rounds", type=int, default=4, help="sequential requests at 1 client")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of N concurrent requests")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every setup (medians)")
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    from builder.base_model import embedded_gguf

    gguf = args.gguf or embedded_gguf()
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    cfg = tmp / "bench.yaml"
    cfg.write_text(f"name: bench\npersona:\n  system_prompt: {SYSTEM}\n")
    n = args.clients
    ours_port, theirs_port = free_port(), free_port()
    ours_base, theirs_base = f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{theirs_port}"
    env = {**os.environ, "PROTEGE_HOME": str(tmp / "home")}
    # Both servers stay up (an idle server costs no CPU) and the setups are measured in interleaved repetitions,
    # medians reported: on a shared machine the load drifts, and back-to-back blocks would measure the drift.
    procs = [start([sys.executable, "-m", "protege", "serve", str(cfg), "--no-registry", "--port", str(ours_port),
                    "--parallel", str(n), "--n-ctx", str(args.n_ctx), "--threads", str(args.threads),
                    "--log-level", "warning"], ours_base, tmp / "ours.log", env)]
    try:
        procs.append(start([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port",
                            str(theirs_port), "--n_ctx", str(args.n_ctx), "--n_threads", str(args.threads),
                            "--verbose", "False",
                            # its default (True) aborts the running stream whenever a new request arrives
                            "--interrupt_requests", "False"], theirs_base, tmp / "theirs.log"))
        from llama_cpp import Llama

        raw = Llama(model_path=str(gguf), n_ctx=args.n_ctx, n_threads=args.threads, verbose=False)
        setups = {
            "protege_1": lambda: asyncio.run(run_clients(ours_base, "bench", 1, args.single_rounds,
                                                         args.max_tokens)),
            f"protege_{n}": lambda: asyncio.run(run_clients(ours_base, "bench", n, args.rounds, args.max_tokens)),
            "llamacpp_server_1": lambda: asyncio.run(run_clients(theirs_base, str(gguf), 1, args.single_rounds,
                                                                 args.max_tokens)),
            f"llamacpp_server_{n}": lambda: asyncio.run(run_clients(theirs_base, str(gguf), n, args.rounds,
                                                                    args.max_tokens)),
            "raw_1": lambda: run_raw(raw, args.single_rounds, args.max_tokens),
        }
        runs: dict[str, list[dict]] = {k: [] for k in setups}
        for rep in range(args.reps):
            for name, fn in setups.items():
                runs[name].append(fn())
                print(f"rep {rep} {name}: {runs[name][-1]}", flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(60)
    results = {k: {"tok_s": round(statistics.median(r["tok_s"] for r in v), 2),
                   "tokens": sum(r["tokens"] for r in v), "seconds": round(sum(r["seconds"] for r in v), 1),
                   "runs_tok_s": [r["tok_s"] for r in v]} for k, v in runs.items()}

    ratio_n = results[f"protege_{n}"]["tok_s"] / results[f"llamacpp_server_{n}"]["tok_s"]
    ratio_1_raw = results["protege_1"]["tok_s"] / results["raw_1"]["tok_s"]
    ratio_1_server = results["protege_1"]["tok_s"] / results["llamacpp_server_1"]["tok_s"]
    print(f"{'setup':<22}{'tokens':>8}{'seconds':>10}{'median tok/s':>14}  runs")
    for k, v in results.items():
        print(f"{k:<22}{v['tokens']:>8}{v['seconds']:>10}{v['tok_s']:>14}  {v['runs_tok_s']}")
    print(f"protege / llama_cpp.server at {n} clients: {ratio_n:.2f}x (goal >= 2x)")
    print(f"protege / raw llama-cpp-python at 1 client: {ratio_1_raw:.3f} (overhead {100 * (1 - ratio_1_raw):.1f}%, "
          "goal <= 5%)")
    print(f"protege / llama_cpp.server at 1 client: {ratio_1_server:.3f}")

    import llama_cpp

    line = {"bench": "serve_throughput", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
            "versions": {"python": platform.python_version(), "llama_cpp_python": llama_cpp.__version__},
            "gguf": gguf.name, "clients": n, "max_tokens": args.max_tokens, "threads": args.threads,
            "reps": args.reps,
            "results": results, "ratio_vs_llamacpp_server_at_n": round(ratio_n, 3),
            "ratio_vs_raw_at_1": round(ratio_1_raw, 3), "ratio_vs_llamacpp_server_at_1": round(ratio_1_server, 3)}
    out = REPO / "bench" / "results" / "serve_throughput.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

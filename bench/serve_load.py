"""Serving load test: one client at a time vs 32 concurrent clients against scripts.rag_web, side by side.

    flock /tmp/nanochat-heavy.lock python -m bench.serve_load --results results
    python -m bench.serve_load --results results --clients 8 --seconds 15 --single_seconds 10   # short run

Starts `python -m scripts.rag_web` on a free port of 127.0.0.1 with a DAG run's default RAG model
(rag/synthetic_rag, its KB and retriever), then a bounded asyncio client (httpx): --single_seconds of one
client asking one question after another, then --clients clients asking concurrently for --seconds; every
request is a chat completion for a test question (cycled), --max_tokens answer tokens. Only loopback addresses
are targeted, each loop stops at its deadline, and the whole run stops at --max_requests.

Prints, per phase: requests, throughput (requests/s and generated tokens/s), p50/p95 latency, status counts
(5xx other than the deliberate 503 must be zero), and the server's resident memory over the loaded phase
(first vs last 10 s), against the issue's targets (>= 4x one client's throughput, no 5xx, memory flat).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from nanochat.cli import ArgumentParser

TARGET_SPEEDUP = 4.0
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(results: Path, port: int, batch_size: int | None, max_queue: int) -> subprocess.Popen:
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "scripts.rag_web", "--knowledge_base", str(results / "kb" / "synthetic" / "bm25"),
           "--source", "rag", "--model_tag", "synthetic_rag", "--base_dir", str(results / "checkpoints"),
           "--host", LOOPBACK, "--port", str(port), "--device", "cpu", "--max_queue", str(max_queue)]
    if batch_size:
        cmd += ["--batch_size", str(batch_size)]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    return subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def wait_healthy(client, url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise SystemExit(f"rag_web exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            if (await client.get(url + "/health")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit("rag_web did not become healthy")


async def phase(client, url: str, questions: list[str], clients: int, seconds: float, max_tokens: int,
                max_requests: int, pid: int) -> dict:
    """`clients` loops, each asking question after question until the deadline -> latencies, statuses, memory."""
    import httpx
    deadline = time.monotonic() + seconds
    latencies, statuses, tokens = [], Counter(), [0]
    counter = [0]
    memory = []

    async def user(k: int):
        while time.monotonic() < deadline and counter[0] < max_requests:
            q = questions[counter[0] % len(questions)]
            counter[0] += 1
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/chat/completions", timeout=120.0,
                                      json={"messages": [{"role": "user", "content": q}], "max_tokens": max_tokens})
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                    tokens[0] += r.json()["usage"]["completion_tokens"]
                elif r.status_code == 503:
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            except httpx.HTTPError as e:
                statuses[type(e).__name__] += 1

    async def sample_memory():
        while time.monotonic() < deadline:
            memory.append((time.monotonic(), rss_mb(pid)))
            await asyncio.sleep(1.0)

    t0 = time.perf_counter()
    sampler = asyncio.create_task(sample_memory())
    await asyncio.gather(*(user(k) for k in range(clients)))
    elapsed = time.perf_counter() - t0
    sampler.cancel()
    return {"clients": clients, "seconds": elapsed, "ok": len(latencies), "statuses": dict(statuses),
            "rps": len(latencies) / elapsed, "tps": tokens[0] / elapsed,
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "p95": statistics.quantiles(latencies, n=20)[18] if len(latencies) >= 20 else float("nan"),
            "memory": [m for _, m in memory]}


async def run(args) -> None:
    import httpx
    results = Path(args.results)
    questions = [json.loads(line)["question"] for line in
                 (results / "synthetic" / "queries_test.jsonl").read_text().splitlines()]
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    proc = start_server(results, port, args.batch_size, args.max_queue)
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    try:
        async with httpx.AsyncClient(limits=limits) as client:
            await wait_healthy(client, url, proc)
            health = (await client.get(url + "/health")).json()
            print(f"server: {health['model']}, {health['retrieval']}, batch_size {health['batch_size']}, "
                  f"queue {health['queue']['max']}; {len(questions)} test questions, max_tokens {args.max_tokens}",
                  flush=True)
            await phase(client, url, questions, 4, 5, args.max_tokens, 50, proc.pid)  # warm-up
            single = await phase(client, url, questions, 1, args.single_seconds, args.max_tokens, args.max_requests,
                                 proc.pid)
            loaded = await phase(client, url, questions, args.clients, args.seconds, args.max_tokens,
                                 args.max_requests, proc.pid)
            health = (await client.get(url + "/health")).json()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"{'phase':26s} {'secs':>5s} {'ok':>6s} {'req/s':>7s} {'tok/s':>7s} {'p50 s':>7s} {'p95 s':>7s} "
          f"{'x single':>8s}  statuses")
    for name, r in (("1 client at a time", single), (f"{args.clients} concurrent clients", loaded)):
        print(f"{name:26s} {r['seconds']:5.0f} {r['ok']:6d} {r['rps']:7.2f} {r['tps']:7.1f} {r['p50']:7.3f} "
              f"{r['p95']:7.3f} {r['rps'] / single['rps']:7.2f}x  {r['statuses']}")
    server_errors = sum(n for s, n in loaded["statuses"].items() if isinstance(s, int) and s >= 500 and s != 503)
    server_errors += sum(n for s, n in single["statuses"].items() if isinstance(s, int) and s >= 500 and s != 503)
    mem = loaded["memory"]
    head, tail = statistics.mean(mem[:10]), statistics.mean(mem[-10:])
    speedup = loaded["rps"] / single["rps"]
    print(f"server RSS over the loaded phase: first 10 s {head:.0f} MB, last 10 s {tail:.0f} MB, max {max(mem):.0f} MB "
          f"({tail - head:+.0f} MB); batches {health['batches']}, largest {health['largest_batch']}, "
          f"rejected (503) {health['rejected']}, timed out {health['timed_out']}")
    print(f"throughput {speedup:.2f}x one client ({'meets' if speedup >= TARGET_SPEEDUP else 'misses'} the >= "
          f"{TARGET_SPEEDUP:.0f}x target); 5xx other than 503: {server_errors}; memory "
          f"{'flat' if tail - head < max(50.0, 0.1 * head) else 'GROWING'}")


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results", help="a DAG run's results/ directory")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients in the loaded phase")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the loaded phase")
    p.add_argument("--single_seconds", type=float, default=30.0, help="length of the one-client phase")
    p.add_argument("--max_tokens", type=int, default=32, help="answer tokens per request (the evaluation's)")
    p.add_argument("--max_requests", type=int, default=100_000, help="requests per phase at most")
    p.add_argument("--batch_size", type=int, default=None, help="server --batch_size (default: per device)")
    p.add_argument("--max_queue", type=int, default=64, help="server --max_queue")
    asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    main()

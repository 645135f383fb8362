"""Concurrent chats on one generator replica: batched against one request at a time, same replica, one run.

Eight clients each ask chat questions (streaming off, `max_tokens` 48, greedy) of a Serve app whose
generator is the bundled SmolLM2-135M on the transformers engine, first with batching off
(`batch.max_size` 1: the replica answers one request at a time, as before batching), then with the
default batching (`batch.max_size` 8). Prints completion tokens/s of each, `batch_ratio` (batched over one
at a time; goal >= 2.0 on 2 cores) and the p50/p95 latency of both.

    python benchmarks/serve_chat.py [--clients 8] [--requests 4] [--max-tokens 48]

The index is a tiny one built from ten seeded sentences (retrieval is not what is measured).
"""

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import ray
from ray import serve
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
from ragworks.config import parse_spec
from ragworks.runner import run_job  # noqa: E402
from ragworks.serve import build  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--clients", type=int, default=8)
ap.add_argument("--requests", type=int, default=4, help="chats per client, per setting")
ap.add_argument("--max-tokens", type=int, default=48)
args = ap.parse_args()

TOPICS = ["volcanoes", "tides", "bread", "copper wires", "vaccines", "glaciers", "bees", "rainbows", "comets", "salt"]
root = Path(tempfile.mkdtemp(prefix="rw-serve-chat-"))
(root / "docs").mkdir()
(root / "docs" / "corpus.jsonl").write_text("".join(
    f'{{"_id": "d{i}", "title": "", "text": "A short note about {t} and why {t} matter to people."}}\n'
    for i, t in enumerate(TOPICS)))
ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
         _temp_dir=str(root / "ray"))
run_job(parse_spec({"corpus": {"source": {"path": str(root / "docs")}}, "index": {"concurrency": [1, 1]}}),
        workdir=root / "wd", console=Console(quiet=True))
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
serve.start(http_options={"host": "127.0.0.1", "port": port})
url = f"http://127.0.0.1:{port}/v1/chat/completions"


async def load(clients: int, requests: int) -> tuple[list[float], int, float]:
    latencies, tokens = [], 0
    async with httpx.AsyncClient(timeout=600) as client:
        async def one_client(c: int) -> None:
            nonlocal tokens
            for r in range(requests):
                topic = TOPICS[(c + r) % len(TOPICS)]
                t = time.perf_counter()
                out = await client.post(url, json={"messages": [{"role": "user", "content": f"Tell me about {topic}."}],
                                                   "max_tokens": args.max_tokens, "top_k": 2})
                out.raise_for_status()
                latencies.append(time.perf_counter() - t)
                tokens += out.json()["usage"]["completion_tokens"]
        start = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        return latencies, tokens, time.perf_counter() - start


results = {}
for name, size in (("one at a time", 1), ("batched", 8)):
    serve.run(build({"workdir": str(root / "wd"), "api_key_env": "RAGWORKS_BENCH_NO_KEY", "access_log": False,
                     "batch": {"max_size": size}, "cpus": {"Generator": max(1, os.cpu_count() - 1)}}),
              name="rag", route_prefix="/")
    asyncio.run(load(2, 1))  # warm-up: the model loaded, the first steps run
    lat, tokens, wall = asyncio.run(load(args.clients, args.requests))
    q = statistics.quantiles(lat, n=20)
    results[name] = tokens / wall
    print(f"{name}: {args.clients} clients x {args.requests} chats, {tokens} tokens in {wall:.1f} s: "
          f"{tokens / wall:.1f} tokens/s, p50 {statistics.median(lat):.2f} s, p95 {q[18]:.2f} s", flush=True)
    serve.delete("rag")
serve.shutdown()
ray.shutdown()
print(f"batch_ratio (batched / one at a time tokens/s): {results['batched'] / results['one at a time']:.2f} "
      "(goal >= 2.0)")

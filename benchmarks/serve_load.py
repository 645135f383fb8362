"""Load on the Serve app over loopback vs the same embed+search in one process.

2,000 /v1/search requests (SciFact test claims, cycled) at concurrency 16 to a
Serve app on 127.0.0.1; then the same queries through an in-process loop of
embed + LanceDB search with the same index. Prints p50, p99, requests/s, errors
and the ratio serve/in-process (target >= 0.5 on 2 cores).

    python benchmarks/serve_load.py [--requests 2000] [--concurrency 16] [--mode hybrid]

The index is SciFact's (built once into runs/bench-scifact by the corpus and
index stages; later runs reuse it), or --workdir of any job.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx
import ray
from ray import serve
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
from ragworks.config import parse_spec
from ragworks.index import open_index  # noqa: E402
from ragworks.runner import run_job  # noqa: E402
from ragworks.serve import build  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--data", default="../shared/data/scifact")
ap.add_argument("--workdir", default=None, help="a job's workdir to serve (default: build runs/bench-scifact)")
ap.add_argument("--requests", type=int, default=2000)
ap.add_argument("--concurrency", type=int, default=16)
ap.add_argument("--mode", default="hybrid", choices=["dense", "fulltext", "hybrid"])
ap.add_argument("--top-k", type=int, default=10)
ap.add_argument("--baseline", type=int, default=300, help="queries timed in the in-process loop")
args = ap.parse_args()

ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
workdir = Path(args.workdir or "runs/bench-scifact")
if args.workdir is None:
    spec = parse_spec({"name": "bench-scifact", "corpus": {"source": {"format": "beir", "path": args.data},
                                                          "chunking": {"max_tokens": None}},
                       "index": {"concurrency": [1, 1]}})
    run_job(spec, workdir=workdir, console=Console(stderr=True))
queries = [json.loads(line)["text"] for line in open(Path(args.data) / "queries.jsonl")]

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
serve.start(http_options={"host": "127.0.0.1", "port": port})
# The generator is not on this path: a small share keeps it from taking CPUs the search path could use.
serve.run(build({"workdir": str(workdir), "api_key_env": "RAGWORKS_BENCH_NO_KEY", "cpus": {"Generator": 0.1}}),
          name="rag", route_prefix="/")
url = f"http://127.0.0.1:{port}/v1/search"


async def load(n: int, concurrency: int) -> tuple[list[float], int, float]:
    latencies, errors = [], 0
    todo = iter(range(n))
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            nonlocal errors
            for i in todo:
                t = time.perf_counter()
                try:
                    r = await client.post(url, json={"query": queries[i % len(queries)], "top_k": args.top_k,
                                                     "mode": args.mode})
                    ok = r.status_code == 200 and r.json()["data"]
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t)
                errors += not ok
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - start


asyncio.run(load(50, 4))  # warm-up: models loaded, first batches compiled
lat, errors, wall = asyncio.run(load(args.requests, args.concurrency))
serve_rps = args.requests / wall
serve.shutdown()

searcher = open_index(workdir / "index_tuned" if (workdir / "index_tuned" / "manifest.json").exists() else workdir / "index")
searcher.search(queries[0], mode=args.mode, k=args.top_k)  # warm-up
start = time.perf_counter()
for q in queries[: args.baseline]:
    searcher.search(q, mode=args.mode, k=args.top_k)
local_rps = args.baseline / (time.perf_counter() - start)

q = statistics.quantiles(lat, n=100)
print(f"serve: {args.requests} requests, concurrency {args.concurrency}, mode {args.mode}: {errors} errors, "
      f"p50 {1000 * statistics.median(lat):.1f} ms, p99 {1000 * q[98]:.1f} ms, {serve_rps:.1f} requests/s")
print(f"in-process embed+search loop ({args.baseline} queries): {local_rps:.1f} queries/s")
print(f"ratio serve/in-process: {serve_rps / local_rps:.2f} (target >= 0.5)")

"""Does the served stack answer SciFact claims citing a relevant abstract?

Serves a job's workdir (its tuned index and generator, as `ragworks serve` does) on
127.0.0.1, sends the first N SciFact test claims to /v1/chat/completions and checks
each answer's citations against the test qrels. Prints, per claim, the answer and
whether it cites a relevant abstract, then the share of claims answered with a
relevant citation against the baseline that bounds it: the share whose retrieved
context holds a relevant abstract at all.

    python benchmarks/serve_citations.py --workdir runs/scifact [--claims 20]
"""

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import httpx
import ray
from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
from ragworks.beir import load_qrels, load_queries  # noqa: E402
from ragworks.serve import build  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--workdir", default="runs/scifact", help="a finished job's workdir (index, optionally a generator)")
ap.add_argument("--data", default="../shared/data/scifact")
ap.add_argument("--claims", type=int, default=20, help="test claims asked (the first N by id)")
ap.add_argument("--top-k", type=int, default=4, help="chunks retrieved into the context")
ap.add_argument("--max-tokens", type=int, default=48)
ap.add_argument("--template", default="{claim}", help="the user message, e.g. 'Is it true that {claim}?'")
args = ap.parse_args()

qrels = load_qrels(args.data, "test")
queries = load_queries(args.data, set(qrels))
claims = sorted(queries)[: args.claims]

ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(build({"workdir": args.workdir, "api_key_env": "RAGWORKS_BENCH_NO_KEY"}), name="rag", route_prefix="/")


def docs(chunk_ids: list[str]) -> set[str]:
    """Chunk ids ("DOC#N") to the document ids the qrels judge."""
    return {i.split("#")[0] for i in chunk_ids}


in_context = cited = 0
start = time.perf_counter()
with httpx.Client(timeout=300) as client:
    for qid in claims:
        question = args.template.format(claim=queries[qid].rstrip("."))
        r = client.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": question}], "top_k": args.top_k,
                              "max_tokens": args.max_tokens, "temperature": 0.0})
        r.raise_for_status()
        body = r.json()
        relevant = {d for d, grade in qrels[qid].items() if grade > 0}
        hit, good = bool(docs(body["context"]) & relevant), bool(docs(body["citations"]) & relevant)
        in_context += hit
        cited += good
        answer = body["choices"][0]["message"]["content"].strip().replace("\n", " ")
        print(f"[{'cites relevant' if good else 'relevant in context' if hit else 'not retrieved'}] "
              f"{queries[qid]}\n    -> {answer[:200]}\n    citations {body['citations']}, relevant {sorted(relevant)}")
seconds = time.perf_counter() - start

print(f"\n{len(claims)} claims in {seconds:.0f} s ({seconds / len(claims):.1f} s each), top_k {args.top_k}")
print(f"relevant abstract in the retrieved context (baseline): {in_context}/{len(claims)}")
print(f"answer cites a relevant abstract: {cited}/{len(claims)}")
print(f"ratio cited / retrieved: {cited / max(in_context, 1):.2f}")
serve.shutdown()

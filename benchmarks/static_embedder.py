"""What the static embedder trades: retrieval quality against embedding speed, next to the bundled MiniLM.

For each embedder, the BEIR dataset goes through the job's own corpus, index and evaluate stages (one chunk
per document, dense mode only), and the same chunks are then embedded again in this process, on every core,
with nothing else timed: nDCG@10 from the first, docs/s from the second.

    python benchmarks/static_embedder.py [--dataset ../shared/data/scifact] [--embedders static,base] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
import pyarrow.dataset as pads  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from ragworks.config import parse_spec
from ragworks.index.embed import load_embedder  # noqa: E402
from ragworks.runner import run_job  # noqa: E402
from ragworks.stage import outputs_at  # noqa: E402


def docs_per_second(embedder: str, texts: list[str], batch_size: int) -> float:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_embedder(embedder)
    model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up: first-call allocations
    t0 = time.perf_counter()
    model.encode(texts, batch_size=batch_size, show_progress_bar=False)
    return len(texts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="../shared/data/scifact")
    ap.add_argument("--embedders", default="static,base", help="comma-separated index.embedder values")
    ap.add_argument("--limit", type=int, default=None, help="first N documents only (nDCG then means little)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workdir", default=None, help="default: a temporary folder (kept: re-runs skip what is done)")
    args = ap.parse_args()

    console = Console()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ragworks-static-"))
    dataset = str(Path(args.dataset).resolve())
    results = []
    for embedder in args.embedders.split(","):
        spec = parse_spec({
            "name": f"static-bench-{embedder}",
            "corpus": {"source": {"format": "beir", "path": dataset, "limit": args.limit}, "chunking": {"max_tokens": None}},
            "index": {"embedder": embedder, "batch_size": args.batch_size, "fulltext": False},
            "evaluate": {"dataset": dataset, "modes": ["dense"]},
        })
        wd = workdir / embedder
        run_job(spec, workdir=wd, console=console)
        metrics = outputs_at(wd / "evaluate").metrics["dense"]
        chunks = outputs_at(wd / "corpus").chunks
        texts = pads.dataset(chunks).to_table(columns=["text"])["text"].to_pylist()
        rate = docs_per_second(embedder, texts, args.batch_size)
        results.append((embedder, metrics, rate, len(texts)))

    table = Table(title=f"{Path(dataset).name}, dense, one chunk per document; docs/s on {os.cpu_count()} CPUs, "
                        f"batch {args.batch_size}")
    for column in ("embedder", "nDCG@10", "Recall@100", "MRR@10", "docs", "docs/s"):
        table.add_column(column, justify="left" if column == "embedder" else "right")
    for embedder, m, rate, n in results:
        table.add_row(embedder, *(f"{m[k]:.4f}" for k in ("ndcg@10", "recall@100", "mrr@10")), f"{n:,}",
                      f"{rate:,.0f}")
    console.print(table)
    console.print(f"workdir: {workdir}")


if __name__ == "__main__":
    main()

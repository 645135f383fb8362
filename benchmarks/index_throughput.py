"""Embed + index throughput: the ragworks `index` stage vs a plain single-process loop.

Both embed the same chunks (the corpus stage's output for a BEIR corpus, SciFact by
default) with the same model and batch size and write a LanceDB table; the plain loop
is sentence-transformers `encode` + LanceDB `add` in one process with torch using every
core. Prints docs/s of each and their ratio (target on 2 cores: >= 0.8).

    python benchmarks/index_throughput.py [--dataset ../shared/data/scifact] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import lancedb
import pyarrow.parquet as pq
from rich.console import Console

from ragworks.config import parse_spec
from ragworks.index.embed import load_embedder, vector_array
from ragworks.runner import run_job
from ragworks.stage import outputs_at


def plain_loop(chunk_files: list[Path], model_name: str, batch_size: int, out: Path) -> tuple[int, float]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    model = load_embedder(model_name)
    db, table, n = lancedb.connect(str(out)), None, 0
    for f in chunk_files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=["id", "doc_id", "text"]):
            vectors = model.encode(batch.column("text").to_pylist(), batch_size=batch_size, show_progress_bar=False)
            rb = batch.append_column("vector", vector_array(vectors))
            if table is None:
                table = db.create_table("chunks", data=rb)
            else:
                table.add(rb)
            n += rb.num_rows
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="../shared/data/scifact")
    ap.add_argument("--limit", type=int, default=None, help="first N documents only")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=None, help="chunk size (default: whole documents)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    console = Console()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ragworks-bench-"))
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    source = {"format": "beir", "path": args.dataset, "limit": args.limit}
    index = {"batch_size": args.batch_size, "fulltext": False, "concurrency": [1, os.cpu_count() or 1]}
    spec = parse_spec({"name": "bench", "corpus": {"source": source, "chunking": {"max_tokens": args.max_tokens}},
                       "index": index})
    run_job(spec.model_copy(update={"index": None}), workdir=workdir, console=console)
    chunk_files = sorted(Path(outputs_at(workdir / "corpus").chunks).rglob("*.parquet"))

    console.rule("plain loop: sentence-transformers encode + LanceDB add, one process")
    n_plain, s_plain = plain_loop(chunk_files, "base", args.batch_size, workdir / "plain-db")

    console.rule("ragworks index stage: Ray Data actor pool + LanceDB")
    t0 = time.perf_counter()
    run_job(spec, workdir=workdir, force=["index"], console=console)
    s_pipe, n_pipe = time.perf_counter() - t0, outputs_at(workdir / "index").counts["rows"]
    assert n_pipe == n_plain, (n_pipe, n_plain)

    plain, pipe = n_plain / s_plain, n_pipe / s_pipe
    console.print(f"\ndocs: {n_plain:,}  batch size: {args.batch_size}  cpus: {os.cpu_count()}")
    console.print(f"plain loop : {s_plain:8.1f} s  {plain:8.1f} docs/s")
    console.print(f"pipeline   : {s_pipe:8.1f} s  {pipe:8.1f} docs/s")
    console.print(f"ratio pipeline/plain: {pipe / plain:.2f}  (target >= 0.8)")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

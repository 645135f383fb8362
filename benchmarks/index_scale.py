"""The index stage at scale: N synthetic chunks embedded with the static embedder, stage vs plain loop.

Seeded synthetic chunks (letter-only words drawn Zipf-like from a made-up vocabulary, no digits, so text
normalisers leave them alone) are written as a finished corpus stage's output. Then, each in a process of its
own, with the same static model and batch size:

- stage: the real `index` stage (`ragworks.runner.run_job` with an index section) on a local Ray that a helper
  process of this script holds: Ray Data actor pool, Lance fragments written by the workers, one commit in the
  driver;
- plain: one process reading the chunk files in batches, `encode`, and LanceDB `table.add` every `--add-rows`.

Both write the same columns and build no ANN or full-text index (that is not embedding). Prints rows/s of
each, their ratio (target >= 0.8), and each process's peak RSS from `os.wait4` (the stage's driver connects to
the Ray beside it, so its figure is the driver alone). Compare the driver's peak RSS of a 100k and a 1M run: the
target is at most 1.25x, i.e. nothing in the driver grows with the corpus.

This process only starts the others and stays small: on Linux a child's peak RSS as wait4 reports it includes
its parent's peak at the moment it was spawned (the high-water mark survives exec), so a parent that had
generated the corpus or started Ray itself would report its own size as the driver's.

    python benchmarks/index_scale.py --rows 20000
    python benchmarks/index_scale.py --rows 1000000 --workdir /tmp/scale-1m
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

ROWS_PER_FILE = 100_000


def write_chunks(folder: Path, rows: int, words: int, seed: int) -> None:
    """`rows` one-chunk documents in the corpus stage's schema, ROWS_PER_FILE to a Parquet file."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ragworks.corpus.records import SCHEMA

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, n)) for n in rng.integers(2, 10, 20_000)])
    p = 1.0 / np.arange(1, len(vocab) + 1)  # Zipf: a few words everywhere, most rare, as in prose
    p /= p.sum()
    folder.mkdir(parents=True)
    for start in range(0, rows, ROWS_PER_FILE):
        n = min(ROWS_PER_FILE, rows - start)
        lengths = rng.integers(words // 2, words * 3 // 2 + 1, n)
        drawn = vocab[rng.choice(len(vocab), int(lengths.sum()), p=p)]
        texts = [" ".join(ws) for ws in np.split(drawn, np.cumsum(lengths)[:-1])]
        ids = [f"s{i}" for i in range(start, start + n)]
        columns = {"kind": ["chunk"] * n, "id": [f"{d}#0" for d in ids], "doc_id": ids, "chunk_index": [0] * n,
                   "n_tokens": lengths.tolist(), "title": [""] * n, "text": texts, "source": ["synthetic"] * n,
                   "line": list(range(start + 1, start + n + 1)), "reason": [None] * n, "duplicate_of": [None] * n,
                   "metadata": ["{}"] * n, "doc_hash": [None] * n, "chunk_hash": [None] * n}
        pq.write_table(pa.table(columns, schema=SCHEMA), folder / f"part-{start // ROWS_PER_FILE:05d}.parquet")


def run_data(args) -> dict:
    """The chunks and a corpus manifest, as a finished corpus stage leaves them (the index stage reads them the
    same way, and the corpus stage is not what is timed); the static model distilled here, so neither side pays."""
    from ragworks.manifest import write_manifest
    from ragworks.models import resolve_embedder

    stage = args.workdir / "wd" / "corpus"
    t0 = time.perf_counter()
    write_chunks(stage / "chunks", args.rows, args.words, args.seed)
    for empty in ("duplicates", "rejects"):
        (stage / empty).mkdir()
    outputs = {"chunks": str(stage / "chunks"), "duplicates": str(stage / "duplicates"), "rejects": str(stage / "rejects"),
               "counts": {"input_records": args.rows, "documents": args.rows, "chunks": args.rows, "duplicates": 0,
                          "rejects": 0}}
    write_manifest(stage, {"stage": "corpus", "key": f"synthetic-{args.rows}-{args.words}-{args.seed}",
                           "run_id": f"synthetic-{args.seed}", "config": {}, "outputs": outputs})
    seconds = time.perf_counter() - t0
    resolve_embedder("static")
    return {"rows": args.rows, "seconds": seconds}


def run_ray(args) -> None:
    """Holds a local Ray until stdin closes; how to connect to it goes to ray.json."""
    import ray

    ray.init(address="local", num_cpus=args.ray_cpus or args.cpus + 1, include_dashboard=False, logging_level="ERROR")
    # ray.init turns token authentication on for the Ray it starts (RAY_AUTH_MODE in its own environment, the
    # token in ~/.ray): a driver connecting by address needs the same mode, which a child of this would inherit
    (args.workdir / "ray.json").write_text(json.dumps({"address": ray.get_runtime_context().gcs_address,
                                                       "auth_mode": os.environ.get("RAY_AUTH_MODE")}))
    sys.stdin.read()
    ray.shutdown()


def run_stage(args) -> dict:
    from rich.console import Console

    from ragworks.config import JobSpec
    from ragworks.runner import run_job
    from ragworks.stage import registry

    spec = {"name": "index-scale", "index": {
        "embedder": "static", "batch_size": args.batch_size, "concurrency": [args.cpus, args.cpus], "fulltext": False,
        "num_cpus": 1.0,  # a whole CPU per actor, as docs/benchmarks.md's figures were measured (one thread either way)
        "ann": {"min_rows": 10**12}}}
    # JobSpec, not parse_spec: the spec has no corpus section on purpose, the runner finds the finished one
    t0 = time.perf_counter()
    manifests = run_job(JobSpec.model_validate(spec), workdir=args.workdir / "wd", address=args.address,
                        console=Console(stderr=True))
    return {"rows": registry()["index"].outputs.from_manifest(manifests["index"]).counts["rows"], "seconds": time.perf_counter() - t0}


def run_plain(args) -> dict:
    os.environ["RAYON_NUM_THREADS"] = str(args.cpus)  # the tokenizer's threads: a static model runs no torch
    import lancedb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ragworks.index.embed import load_embedder, vector_array
    from ragworks.index.index import TABLE_COLUMNS

    t0 = time.perf_counter()
    model = load_embedder("static")
    db, table, pending, rows = lancedb.connect(str(args.workdir / "plain")), None, [], 0

    def add() -> None:
        nonlocal table, pending
        data = pa.Table.from_batches(pending)
        if table is None:
            table = db.create_table("chunks", data)
        else:
            table.add(data)
        pending = []

    from ragworks.stage import outputs_at

    for f in sorted(Path(outputs_at(args.workdir / "wd" / "corpus").chunks).rglob("*.parquet")):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=args.batch_size, columns=TABLE_COLUMNS):
            vectors = model.encode(batch.column("text").to_pylist(), batch_size=args.batch_size, show_progress_bar=False)
            pending.append(batch.append_column("vector", vector_array(vectors)))
            rows += batch.num_rows
            if sum(b.num_rows for b in pending) >= args.add_rows:
                add()
    if pending:
        add()
    assert table.count_rows() == rows
    return {"rows": rows, "seconds": time.perf_counter() - t0}


SIDES = {"data": run_data, "stage": run_stage, "plain": run_plain}


def child(name: str, args, **popen) -> subprocess.Popen:
    command = [sys.executable, __file__, "--side", name, "--rows", str(args.rows), "--words", str(args.words),
               "--seed", str(args.seed), "--batch-size", str(args.batch_size), "--add-rows", str(args.add_rows),
               "--cpus", str(args.cpus), "--workdir", str(args.workdir)]
    command += ["--ray-cpus", str(args.ray_cpus)] if args.ray_cpus else []
    command += ["--address", args.address] if args.address else []
    log = (args.workdir / f"{name}.log").open("w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **popen)


def side(name: str, args) -> dict:
    """One side in a process of its own: its result, and its peak RSS from the kernel's accounting."""
    proc = child(name, args)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{name} failed: see {args.workdir / f'{name}.log'}")
    return {**json.loads((args.workdir / f"{name}.json").read_text()), "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--words", type=int, default=60, help="mean words per chunk (uniform from half to 1.5x)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=1024, help="rows per encode call, both sides")
    ap.add_argument("--add-rows", type=int, default=65_536, help="plain loop: rows per LanceDB table.add")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="cores to use: the stage's embedder "
                    "actors (one thread each), the plain loop's threads")
    ap.add_argument("--ray-cpus", type=int, default=None, help="the local Ray's CPU slots (default: --cpus + 1, so the "
                    "Parquet read finds a slot beside the actors, as the SciFact specs do)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed at the end")
    ap.add_argument("--side", choices=(*SIDES, "ray"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--address", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side == "ray":
        return run_ray(args)
    if args.side:  # a child: do one side, leave the result beside its log
        (args.workdir / f"{args.side}.json").write_text(json.dumps(SIDES[args.side](args)))
        return

    keep = args.workdir is not None
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="ragworks-index-scale-"))).resolve()
    for stale in ("wd", "plain"):  # a kept workdir of an earlier run
        shutil.rmtree(args.workdir / stale, ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "ray.json").unlink(missing_ok=True)
    data = side("data", args)
    print(f"{args.rows:,} synthetic chunks of ~{args.words} words written in {data['seconds']:.0f} s")

    ray_holder = child("ray", args, stdin=subprocess.PIPE)
    while not (args.workdir / "ray.json").exists():
        if ray_holder.poll() is not None:
            sys.exit(f"the local Ray did not start: see {args.workdir / 'ray.log'}")
        time.sleep(0.2)
    held = json.loads((args.workdir / "ray.json").read_text())
    args.address = held["address"]
    if held["auth_mode"]:
        os.environ["RAY_AUTH_MODE"] = held["auth_mode"]
    try:
        plain = side("plain", args)
        stage = side("stage", args)
    finally:
        ray_holder.communicate(b"")  # stdin closed: it shuts its Ray down
    assert stage["rows"] == plain["rows"] == args.rows, (stage, plain)

    rate = {s: r["rows"] / r["seconds"] for s, r in (("plain", plain), ("stage", stage))}
    print(f"rows: {args.rows:,}  batch size: {args.batch_size}  cores: {args.cpus} (Ray slots: "
          f"{args.ray_cpus or args.cpus + 1})  static embedder")
    print(f"plain loop : {plain['seconds']:8.1f} s  {rate['plain']:9,.0f} rows/s  peak RSS {plain['peak_rss_mb']:7.0f} MB")
    print(f"index stage: {stage['seconds']:8.1f} s  {rate['stage']:9,.0f} rows/s  driver peak RSS "
          f"{stage['peak_rss_mb']:7.0f} MB")
    print(f"ratio stage/plain: {rate['stage'] / rate['plain']:.2f}  (target >= 0.8)")
    print(f"driver peak RSS at {args.rows:,} rows: {stage['peak_rss_mb']:.0f} MB  (target: at 1M within 1.25x of 100k; "
          f"this launcher's own peak, a floor for both: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    if not keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

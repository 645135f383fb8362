"""Ray Data's two Parquet readers on the small reads a job makes: why `ray.parquet_reader` defaults to v1.

Ray 2.60's `read_parquet` goes through the v2 datasource by default, whose listing step starts a pool of
footer-reading actors for every read; ragworks asks for v1 (`RayConfig.parquet_reader`). This reads the same
folders (seeded files, a few rows each, like a stage's outputs) with each reader on one embedded Ray, the
readers alternating so neither gets a warmer machine, and prints the median seconds per read of each and
their ratio (v2 / v1). Both must return the same rows; the script checks.

    python benchmarks/parquet_reader.py --reads 6 --files 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_folder(folder: Path, files: int, rows: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    for i in range(files):
        keys = [f"k{i}-{j}" for j in range(rows)]
        pq.write_table(pa.table({"key": keys, "x": rng.random(rows)}), folder / f"part-{i}.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reads", type=int, default=6, help="reads per reader")
    ap.add_argument("--files", type=int, default=4, help="files per folder")
    ap.add_argument("--rows", type=int, default=50, help="rows per file")
    ap.add_argument("--num-cpus", type=int, default=4, help="slots of the embedded Ray (the quickstart's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import ray
    import ray.data

    rng = np.random.default_rng(args.seed)
    root = Path(tempfile.mkdtemp(prefix="parquet-reader-"))
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    seconds: dict[str, list[float]] = {"v1": [], "v2": []}
    for i in range(args.reads):
        folder = root / f"read-{i}"
        write_folder(folder, args.files, args.rows, rng)
        keys = {}
        for reader in ("v2", "v1") if i % 2 else ("v1", "v2"):
            ctx.use_datasource_v2 = reader == "v2"
            t0 = time.perf_counter()
            rows = ray.data.read_parquet(str(folder)).take_all()
            seconds[reader].append(time.perf_counter() - t0)
            keys[reader] = sorted(r["key"] for r in rows)
        assert keys["v1"] == keys["v2"] and len(keys["v1"]) == args.files * args.rows, "the readers disagree"
    ray.shutdown()
    med = {r: statistics.median(s) for r, s in seconds.items()}
    for reader in ("v1", "v2"):
        print(f"{reader}: median {med[reader]:.2f} s a read ({', '.join(f'{x:.2f}' for x in seconds[reader])})")
    print(f"ratio v2 / v1: {med['v2'] / med['v1']:.1f} (seconds a read; same rows from both)")


if __name__ == "__main__":
    main()

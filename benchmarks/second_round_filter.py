"""Would a Promptagator-style second round train on different data? Measured before building one.

Round two re-filters the synthetic queries with the round-one tuned retriever and trains again.
It can only help if the tuned retriever keeps a different set than the base one did. This takes
every synthetic query of a finished job that reached the round-trip check (the rule filters and
dedup passed it) and runs the job's own `filters` round-trip check (`RoundTrip`, the job's
consistency config) twice: against the base index (the baseline: round one's own decision)
and against the tuned index (round two's).

Prints how many each keeps, how many change sides, and the ratio of round two's kept set to
round one's, with the share of round-two training pairs round one did not have.

    python benchmarks/second_round_filter.py --workdir runs/scifact
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("LANCEDB_LOG", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from ragworks.synth.config import FiltersConfig
from ragworks.synth.filters import RoundTrip  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--workdir", default="runs/scifact", help="a finished job's workdir (filters, index, index_tuned)")
ap.add_argument("--batch-size", type=int, default=256)
args = ap.parse_args()
console = Console()
workdir = Path(args.workdir)
for stage in ("filters", "index", "index_tuned"):
    if not (workdir / stage / "manifest.json").exists():
        sys.exit(f"{workdir / stage}: no finished stage; run the job first")
cfg = FiltersConfig(**json.loads((workdir / "filters" / "manifest.json").read_text())["config"])
if not cfg.consistency.enabled:
    sys.exit(f"{workdir}/filters ran without the round-trip check: nothing to compare")

# Every query the round-trip check saw in round one: kept, or dropped by it (not by a rule before it).
queries = pads.dataset(workdir / "filters" / "queries", partitioning="hive")
seen = (pc.field("dropped_by").is_null()) | (pc.field("dropped_by") == "consistency")
columns = ["id", "key", "query", "text"]
checks = {name: RoundTrip(str(workdir / name), cfg) for name in ("index", "index_tuned")}
kept = {name: set() for name in checks}
seconds = dict.fromkeys(checks, 0.0)
total = queries.count_rows(filter=seen)
with Progress(console=console) as bar:
    task = bar.add_task("round-trip checks (queries)", total=total)
    for batch in queries.to_batches(columns=columns, filter=seen, batch_size=args.batch_size):
        table = pa.Table.from_batches([batch]).append_column("dropped_by", pa.nulls(batch.num_rows, pa.string()))
        for name, check in checks.items():
            t0 = time.perf_counter()
            out = check(table)
            seconds[name] += time.perf_counter() - t0
            kept[name].update(k for k, d in zip(out["key"].to_pylist(), out["dropped_by"].to_pylist()) if d is None)
        bar.advance(task, batch.num_rows)

one, two = kept["index"], kept["index_tuned"]
console.print(f"{total:,} synthetic queries reached the round-trip check ({cfg.consistency.mode}, own chunk in the "
              f"top {cfg.consistency.top_k})")
console.print(f"round one (base index, baseline): keeps {len(one):,}  [{seconds['index']:.0f} s]")
console.print(f"round two (tuned index):          keeps {len(two):,}  [{seconds['index_tuned']:.0f} s]")
console.print(f"  kept by both {len(one & two):,}; only round one {len(one - two):,}; only round two {len(two - one):,}")
console.print(f"ratio round two / round one kept: {len(two) / max(len(one), 1):.3f}; round-two pairs new to "
              f"training: {len(two - one) / max(len(two), 1):.1%}")

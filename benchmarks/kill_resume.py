"""Exactly-once resume under repeated kills: the synthesize stage's driver SIGKILLed at seeded random moments.

Each round starts `ragworks run` against one local Ray (so a killed driver's workers can go on writing for a
moment, as on a cluster), kills its process group at a random moment of the generation, and starts it again;
the last round runs to the end. Then the committed output must hold every key exactly once, none missing,
and the requests the fake OpenAI server answered may exceed the keys only by what the kills cut short.

    python benchmarks/kill_resume.py [--kills 10] [--chunks 60] [--per-chunk 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fake_llm import FakeLLM  # noqa: E402  (the test suite's OpenAI-compatible server on 127.0.0.1)

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--kills", type=int, default=10)
ap.add_argument("--chunks", type=int, default=200, help="one-chunk documents")
ap.add_argument("--per-chunk", type=int, default=4, help="generations per chunk (keys = chunks x this)")
ap.add_argument("--batch-size", type=int, default=4)
ap.add_argument("--delay", type=float, default=0.5, help="seconds the fake server takes per request")
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()

rng = random.Random(args.seed)
root = Path(tempfile.mkdtemp(prefix="ragworks-kill-resume-"))
words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
with open(root / "corpus.jsonl", "w") as f:
    for i in range(args.chunks):
        text = " ".join(rng.choice(words) for _ in range(12))
        f.write(f'{{"_id": "d{i}", "title": "", "text": "document {i} {text}"}}\n')

ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
workdir = root / "wd"
keys_expected = args.chunks * args.per_chunk
with FakeLLM(delay=args.delay) as llm:
    spec = {"name": "kill-resume", "corpus": {"source": {"path": str(root)}, "chunking": {"max_tokens": None}},
            "index": {"concurrency": [1, 1]},
            "synthesize": {"per_chunk": args.per_chunk, "engine": {"kind": "openai", "base_url": llm.url, "model": "fake",
                                                                   "batch_size": args.batch_size, "concurrency": [1, 1]}}}
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "ragworks.cli", "run", str(job), "--workdir", str(workdir),
               "--address", ray.get_runtime_context().gcs_address]
    attempts = workdir / "synthesize" / "_attempts"
    kills = []
    for round_ in range(args.kills):
        written = len(list(attempts.rglob("*.parquet"))) if attempts.exists() else 0
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        # a moment of the generation: after this round's first new file, then a seeded wait
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and \
                (len(list(attempts.rglob("*.parquet"))) if attempts.exists() else 0) <= written:
            time.sleep(0.05)
        wait = rng.uniform(0.0, 4.0)
        time.sleep(wait)
        if proc.poll() is not None:
            print(f"round {round_}: finished before the kill")
            break
        requests = llm.requests
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        files = len(list(attempts.rglob("*.parquet")))
        kills.append({"round": round_, "after_s": round(wait, 2), "requests": requests, "files": files})
        print(f"round {round_}: killed {wait:.2f} s after its first file; {requests} requests so far, "
              f"{files} files in the attempts")
    final = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, timeout=900)
    requests = llm.requests
    assert final.returncode == 0, final.stdout[-3000:]

out = workdir / "synthesize" / "generated"
keys = [k for f in sorted(out.rglob("*.parquet")) for k in pq.read_table(f, columns=["key"])["key"].to_pylist()]
duplicates = len(keys) - len(set(keys))
missing = keys_expected - len(set(keys))
extra = requests - keys_expected
import json  # noqa: E402

manifest = json.loads((workdir / "synthesize" / "manifest.json").read_text())
dropped = manifest["outputs"]["counts"].get("duplicates_dropped", 0)
print(f"\nkills: {len(kills)}  keys expected: {keys_expected}  rows committed: {len(keys)}  "
      f"duplicates: {duplicates}  missing: {missing}")
print(f"requests answered: {requests}  beyond one per key: {extra} "
      f"({extra / max(1, len(kills)):.1f} a kill, block size {args.batch_size}); "
      f"copies written late and dropped at commit: {dropped}")
ok = duplicates == 0 and missing == 0
print("exactly once:", "yes" if ok else "NO")
sys.exit(0 if ok else 1)

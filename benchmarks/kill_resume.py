"""Exactly-once resume under repeated kills: the synthesize stage's driver SIGKILLed at seeded random moments.

First the corpus and index stages run once, and synthesize runs once to the end without a kill (the fresh run:
the baseline for the driver's peak memory); its output is then removed. Each round then starts `ragworks run`
against one local Ray (so a killed driver's workers can go on writing for a moment, as on a cluster), kills its
process group at a random moment of the generation, and starts it again; the last round runs to the end. Then
the committed output must hold every key exactly once, none missing; with the fake OpenAI server, the requests
it answered may exceed the keys only by what the kills cut short: one block a kill (the engine actor writes
each block it generates, so only the block in progress is lost). The driver's peak RSS in the resumed rounds
is compared with the fresh run's (the done-key check and the commit run in Ray Data, not in the driver).

    python benchmarks/kill_resume.py [--kills 10] [--chunks 200] [--per-chunk 4] [--seed 0]
    python benchmarks/kill_resume.py --engine echo --chunks 25000 --per-chunk 40 --batch-size 5000   # 1M rows
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import pyarrow.parquet as pq
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fake_llm import FakeLLM  # noqa: E402  (the test suite's OpenAI-compatible server on 127.0.0.1)
from ragworks.stage import outputs_at  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--kills", type=int, default=10)
ap.add_argument("--engine", choices=("fake", "echo"), default="fake",
                help="fake: the OpenAI-compatible test server (counts requests); echo: no model, for a million rows")
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
attempts = workdir / "synthesize" / "_attempts"
keys_expected = args.chunks * args.per_chunk


def files() -> int:
    return len(list(attempts.rglob("*.parquet"))) if attempts.exists() else 0


def finish(proc: subprocess.Popen, block: bool = True) -> tuple[int, float] | None:
    """Exit status and peak RSS (MB) of the driver process (wait4's rusage, kept after a SIGKILL too);
    None while it runs, when not `block`ing."""
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if not pid:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


server = FakeLLM(delay=args.delay) if args.engine == "fake" else nullcontext()
with server as llm:
    engine = ({"kind": "openai", "base_url": llm.url, "model": "fake"} if llm else {"kind": "echo"})
    spec = {"name": "kill-resume", "corpus": {"source": {"path": str(root)}, "chunking": {"max_tokens": None}},
            "index": {"concurrency": [1, 1], "batch_size": 256}}
    job = root / "job.yaml"
    command = [sys.executable, "-m", "ragworks.cli", "run", str(job), "--workdir", str(workdir),
               "--address", ray.get_runtime_context().gcs_address]
    job.write_text(yaml.safe_dump(spec))  # corpus and index only: the fresh run below measures synthesize alone
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True, timeout=3600)
    spec["synthesize"] = {"per_chunk": args.per_chunk,
                          "engine": {**engine, "batch_size": args.batch_size, "concurrency": [1, 1]}}
    job.write_text(yaml.safe_dump(spec))
    started = time.time()
    rc, fresh_rss = finish(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    fresh_s = time.time() - started
    assert rc == 0, f"the fresh run failed ({rc})"
    print(f"fresh run (no kill): {fresh_s:.0f} s, driver peak RSS {fresh_rss:.0f} MB")
    shutil.rmtree(workdir / "synthesize")
    requests_before = llm.requests if llm else 0

    kills, resumed_rss, ended = [], [], None
    for round_ in range(args.kills):
        written = files()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        # a moment of the generation: after this round's first new file, then a seeded wait
        deadline = time.time() + 600
        while time.time() < deadline and files() <= written and (ended := finish(proc, block=False)) is None:
            time.sleep(0.05)
        wait = rng.uniform(0.0, 4.0)
        time.sleep(wait)
        if ended or (ended := finish(proc, block=False)):
            print(f"round {round_}: finished before the kill")
            break
        requests = llm.requests - requests_before if llm else 0
        os.killpg(proc.pid, signal.SIGKILL)
        _, rss = finish(proc)
        if round_:
            resumed_rss.append(rss)
        kills.append({"round": round_, "after_s": round(wait, 2), "requests": requests, "files": files()})
        print(f"round {round_}: killed {wait:.2f} s after its first file; {requests} requests so far, "
              f"{files()} files in the attempts; driver peak RSS {rss:.0f} MB")
    rc, rss = ended or finish(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    resumed_rss.append(rss)
    requests = llm.requests - requests_before if llm else 0
    assert rc == 0, f"the last round failed ({rc})"

out = workdir / "synthesize" / "generated"
keys = [k for f in sorted(out.rglob("*.parquet")) for k in pq.read_table(f, columns=["key"])["key"].to_pylist()]
duplicates = len(keys) - len(set(keys))
missing = keys_expected - len(set(keys))
dropped = outputs_at(workdir / "synthesize").counts.get("duplicates_dropped", 0)
print(f"\nkills: {len(kills)}  keys expected: {keys_expected:,}  rows committed: {len(keys):,}  "
      f"duplicates: {duplicates}  missing: {missing}; copies written late and dropped at commit: {dropped}")
ok = duplicates == 0 and missing == 0
print("exactly once:", "yes" if ok else "NO")
if llm:
    extra = requests - keys_expected
    bound = len(kills) * args.batch_size  # one actor: a kill may cut short the one block it is generating
    print(f"requests answered: {requests}  beyond one per key: {extra} ({extra / max(1, len(kills)):.1f} a kill, "
          f"block size {args.batch_size}); waste bound (one block a kill): {extra} <= {bound}:",
          "met" if extra <= bound else "NOT met")
    ok = ok and extra <= bound
ratio = max(resumed_rss) / fresh_rss
print(f"driver peak RSS: fresh {fresh_rss:.0f} MB, resumed rounds max {max(resumed_rss):.0f} MB "
      f"(last {resumed_rss[-1]:.0f} MB): ratio {ratio:.2f} (target <= 1.25)")
sys.exit(0 if ok and ratio <= 1.25 else 1)

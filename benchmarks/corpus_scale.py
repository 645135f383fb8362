"""The corpus stage's dedup at scale, against a known truth and against datatrove (issue 18).

Why: the corpus stage's near-duplicate removal is being moved off one Ray actor. A rewrite must keep the
throughput (at 100k documents the new stage should keep >= 0.8x the docs/s of today's single-actor stage,
both measured in one run) and find the same duplicates. Real corpora have no ground truth, so this script
makes one: seeded documents of letter-only words (text normalisers, datatrove's too, turn digits into "0",
which would make `w123`-style documents identical), exact copies under new ids, and near copies edited until
their true Jaccard similarity of 5-word shingles (computed as platform/ragworks/corpus/dedup.py does:
lowercase `\\w+` words) spreads around the 0.9 threshold. Each tool is then scored against that truth.

The reference is datatrove's MinHash deduplication (huggingface/datatrove, `pipeline/dedup/minhash.py`:
signature -> buckets -> cluster -> filter, run with a `LocalPipelineExecutor`; see
docs/notes/issue18-research.md section 1 for how it runs and what it writes). It reads the same part files;
its input parallelism is one task per file, so the input is split into several.

What is measured, per tool: wall time of the whole command, start-up included (docs/s = N / seconds); the
CPU seconds of its process tree (docs per CPU second says more than docs/s on a machine shared with other
work); the driver's peak RSS (its own VmHWM, and os.wait4's ru_maxrss as benchmarks/kill_resume.py reads it,
which also covers the children the driver reaped); the peak RSS of its largest worker process (the process
tree sampled every 0.5 s with psutil, each process's VmHWM read from /proc; RSS includes the shared
object-store pages a worker maps to read a block, so the largest private resident memory (RssAnon, sampled
every 0.5 s) is printed beside it); exact copies found; near-duplicate
recall (injected pairs with true J >= threshold + 0.05 that end up as duplicates of each other) and precision
(flagged (duplicate, representative) pairs whose true Jaccard, computed from the two texts, is >=
threshold - 0.05); recall per true-Jaccard bucket (the S-curve).

    bash scripts/install.sh bench     # datatrove[processing], orjson, spacy (spacy.blank('en') downloads nothing)
    python benchmarks/corpus_scale.py --docs 20000
    python benchmarks/corpus_scale.py --docs 100000 --bands 14 --rows 9 --baseline-commit 99f6764
    python benchmarks/corpus_scale.py --docs 20000 --skip-datatrove --baseline-commit ''   # this checkout only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD, NUM_PERM, SHINGLE_WORDS = 0.9, 128, 5
NEAR_TARGETS = (0.7, 0.8, 0.85, 0.9, 0.95, 0.98)  # true Jaccard each near copy is edited down to
BUCKET_EDGES = (0.0, 0.75, 0.825, 0.875, 0.925, 0.965, 1.01)  # halfway between the targets
ENV = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}


# ------------------------------------------------------------------ the corpus and its truth
_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = SHINGLE_WORDS) -> set[str]:
    """Word n-grams as platform/ragworks/corpus/dedup.py makes them (lowercase `\\w+` words)."""
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def render(words: list[str], rng: random.Random) -> str:
    """Words as sentences of 8-20 words (capital first letter, full stop): punctuation and case change no
    shingle, for either tool."""
    out, i = [], 0
    while i < len(words):
        k = rng.randint(8, 20)
        sentence = words[i : i + k]
        out.append(" ".join([sentence[0].capitalize(), *sentence[1:]]) + ".")
        i += k
    return " ".join(out)


def near_copy(words: list[str], target: float, rng: random.Random, draw) -> list[str]:
    """`words` with random single-word replacements, insertions and deletions, each kept only while the
    Jaccard similarity to the original stays >= target - 0.01, until it is <= target + 0.005. An edit in
    the middle changes 5 shingles, one near either end fewer, so the fine steps come from the ends."""
    original, copy = shingles(" ".join(words)), list(words)
    for _ in range(400):
        if jaccard(original, shingles(" ".join(copy))) <= target + 0.005:
            break
        trial, at = list(copy), rng.randrange(len(copy))
        op = rng.random()
        if op < 0.5:
            trial[at] = draw()
        elif op < 0.75:
            trial.insert(at, draw())
        elif len(trial) > SHINGLE_WORDS + 1:
            del trial[at]
        if jaccard(original, shingles(" ".join(trial))) >= target - 0.01:
            copy = trial
    return copy


def generate(n: int, seed: int, parts: int, folder: Path) -> None:
    """N documents of ~120 words in `parts` JSONL files under folder/input, shuffled; folder/truth.json."""
    import numpy as np

    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab: set[str] = set()
    while len(vocab) < 30_000:
        vocab.add("".join(rng.choices(letters, k=rng.randint(3, 10))))
    vocab_list = sorted(vocab)
    rng.shuffle(vocab_list)
    ranks = np.arange(1, len(vocab_list) + 1)
    p = 1.0 / (ranks + 2.7)  # Zipf-Mandelbrot: a few common words, a long tail
    p /= p.sum()

    cum = np.cumsum(p).tolist()

    def draw() -> str:
        return rng.choices(vocab_list, cum_weights=cum)[0]

    n_exact, n_near = round(0.02 * n), round(0.05 * n)
    n_orig = n - n_exact - n_near
    lengths = nrng.integers(100, 141, size=n_orig)
    flat = nrng.choice(len(vocab_list), size=int(lengths.sum()), p=p)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    docs = []  # (id, title, words, text)
    for i in range(n_orig):
        words = [vocab_list[j] for j in flat[bounds[i] : bounds[i + 1]]]
        title = " ".join(w.capitalize() for w in words[:3])
        docs.append((f"doc{i:07d}", title, words, render(words, rng)))

    # every copy has a distinct original, and no original has two copies: pairs, not chains
    sources = rng.sample(range(n_orig), n_exact + n_near)
    truth = {"docs": n, "seed": seed, "exact": [], "near": []}
    for k, src in enumerate(sources[:n_exact]):
        doc_id, title, words, text = docs[src]
        docs.append((f"exact{k:07d}", title, words, text))
        truth["exact"].append([doc_id, f"exact{k:07d}"])
    for k, src in enumerate(sources[n_exact:]):
        doc_id, title, words, text = docs[src]
        target = NEAR_TARGETS[k % len(NEAR_TARGETS)]
        edited = near_copy(words, target, rng, draw)
        edited_text = render(edited, rng)
        docs.append((f"near{k:07d}", title, edited, edited_text))
        truth["near"].append([doc_id, f"near{k:07d}", target, round(jaccard(shingles(text), shingles(edited_text)), 4)])

    rng.shuffle(docs)
    (folder / "input").mkdir(parents=True, exist_ok=True)
    files = [open(folder / "input" / f"part-{i:05d}.jsonl", "w") for i in range(parts)]
    for i, (doc_id, title, _, text) in enumerate(docs):
        files[i * parts // len(docs)].write(json.dumps({"id": doc_id, "title": title, "text": text}) + "\n")
    for f in files:
        f.close()
    (folder / "truth.json").write_text(json.dumps(truth))


def load_texts(folder: Path) -> dict[str, str]:
    return {r["id"]: r["text"] for f in sorted((folder / "input").glob("*.jsonl")) for r in map(json.loads, open(f))}


# ------------------------------------------------------------------ measuring a command's process tree
def _memory_mb(pid: int) -> tuple[float, float] | None:
    """(peak RSS so far (VmHWM), private resident memory now (RssAnon)) in MB; None once it is gone. RSS
    also counts the shared object-store pages a Ray worker maps to read a block (plasma is a shared-memory
    file, so those pages are RssShmem); RssAnon is what the process itself holds."""
    try:
        fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
        return int(fields["VmHWM"].split()[0]) / 1024, int(fields["RssAnon"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None


class TreeSampler(threading.Thread):
    """Every 0.5 s: each process under `pid`, its peak RSS (VmHWM; RSS counts the shared object-store pages
    a Ray worker has touched) and its CPU seconds so far (a process that lives under 0.5 s is missed).
    Without psutil only the driver's peak RSS is sampled."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop, self.cpu = pid, threading.Event(), {}
        self.peaks, self.names, self.peak_names = {}, {}, {}  # pid -> MB; its command line; that when it peaked
        self.private = {}  # pid -> (largest RssAnon sampled, MB; its command line then)
        try:
            import psutil

            self.psutil = psutil
        except ImportError:
            self.psutil = None

    def run(self) -> None:
        procs = {}
        while not self.stop.is_set():
            pids = [self.pid]
            if self.psutil:
                try:
                    root = procs.setdefault(self.pid, self.psutil.Process(self.pid))
                    children = root.children(recursive=True)
                except self.psutil.Error:
                    children = []
                for child in children:
                    try:
                        argv = child.cmdline() or [child.name()]
                    except self.psutil.Error:
                        continue
                    self.names[child.pid] = " ".join([os.path.basename(argv[0]), *argv[1:]])[:80]
                    procs.setdefault(child.pid, child)
                    pids.append(child.pid)
                for pid in pids:
                    try:
                        t = procs[pid].cpu_times()
                        self.cpu[pid] = t.user + t.system  # not children_*: the reaped ones are counted here
                    except self.psutil.Error:
                        pass
            for pid in pids:
                mem = _memory_mb(pid)
                if mem is None:
                    continue
                if mem[0] > self.peaks.get(pid, 0):
                    self.peaks[pid], self.peak_names[pid] = mem[0], self.names.get(pid)  # a Ray worker's title changes
                if mem[1] > self.private.get(pid, (0, None))[0]:
                    self.private[pid] = (mem[1], self.names.get(pid))
            self.stop.wait(0.5)

    def largest(self, is_worker) -> tuple[float, str]:
        workers = [(mb, self.peak_names[pid]) for pid, mb in self.peaks.items() if self.peak_names.get(pid)
                   and is_worker(self.peak_names[pid])]
        return max(workers, default=(float("nan"), "psutil missing" if self.psutil is None else "none seen"))

    def largest_private(self, is_worker) -> tuple[float, str]:
        workers = [(mb, name) for pid, (mb, name) in self.private.items() if name and is_worker(name)]
        return max(workers, default=(float("nan"), "none seen"))


def measure(command: list[str], env: dict, log: Path, is_worker, during=None) -> dict:
    """Run `command`, its output to `log`; wall seconds, exit status, driver and largest-worker peak RSS.
    `during(proc)`, if given, runs in a thread beside it (the cluster mode's node kill)."""
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        if during is not None:
            threading.Thread(target=during, args=(proc,), daemon=True).start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        sys.exit(f"{' '.join(command[1:4])} failed ({rc}); the end of {log}:\n" + "".join(open(log).readlines()[-30:]))
    worker_mb, worker = sampler.largest(is_worker)
    private_mb, private_worker = sampler.largest_private(is_worker)
    # wait4's ru_maxrss also covers the children the driver reaped (an embedded Ray's raylet and GCS)
    return {"seconds": seconds, "wait4_mb": usage.ru_maxrss / 1024, "driver_mb": sampler.peaks.get(proc.pid),
            "worker_mb": worker_mb, "worker": worker, "private_mb": private_mb, "private_worker": private_worker,
            "cpu_seconds": sum(sampler.cpu.values()) or None}


# ------------------------------------------------------------------ ragworks: the corpus stage through the CLI
def run_ragworks(platform: Path, input_dir: Path, workdir: Path, banding: dict | None = None,
                 dedup: dict | None = None, submit: str | None = None, during=None) -> dict:
    """`ragworks run` of a spec with only a corpus section, on the embedded local Ray (or `ragworks submit
    --follow` to the cluster at `submit`); PYTHONPATH picks which ragworks (this checkout's platform/, or a
    baseline's). `dedup`: more dedup settings (the cluster mode's max_rows_in_one_task)."""
    import yaml

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    # `banding`: the same bands x rows as datatrove; the baseline (99f6764) has no such setting and uses
    # datasketch's choice for t=0.9 and 128 permutations, 5 bands x 25 rows (research note 2)
    near = {"enabled": True, "threshold": THRESHOLD, "num_perm": NUM_PERM, "shingle_words": SHINGLE_WORDS,
            **(banding or {})}
    spec = {"name": "corpus-scale",
            "corpus": {"source": {"format": "jsonl", "path": str(input_dir), "id_field": "id"},
                       "dedup": {"exact": True, "near": near, **(dedup or {})},
                       "chunking": {"max_tokens": None}}}  # one chunk per document: the dedup is what is measured
    (workdir / "job.yaml").write_text(yaml.safe_dump(spec))
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(platform), ENV.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    command = [sys.executable, "-m", "ragworks.cli", "run", str(workdir / "job.yaml"), "--workdir", str(workdir)]
    if submit:
        command[3:5] = ["submit", str(workdir / "job.yaml"), "--address", submit, "--follow"]
    result = measure(command, env, workdir / "ragworks.log", is_worker=lambda name: name.startswith("ray::"),
                     during=during)

    import pyarrow.dataset as pds

    from ragworks.stage import outputs_at

    stage = workdir / "corpus"
    dups = pds.dataset(outputs_at(stage).duplicates, format="parquet").to_table(columns=["doc_id", "duplicate_of"])
    result["flagged"] = dict(zip(dups["doc_id"].to_pylist(), dups["duplicate_of"].to_pylist()))
    manifest = json.loads((stage / "manifest.json").read_text())
    result["stage_seconds"], result["counts"] = manifest["seconds"], outputs_at(stage).counts
    return result


# ------------------------------------------------------------------ the same stage on a 3-node cluster, a node killed
DASHBOARD = "http://127.0.0.1:8265"


def worker_raylets(number: int) -> list:
    """The raylet of cluster/local.sh's worker `number` (its own --temp-dir): killing it takes the node down."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        argv = " ".join(proc.info["cmdline"] or [])
        if "raylet" in (proc.info["name"] or "") and f"/tmp/ray-worker-{number}" in argv:
            found.append(proc)
    return found


def run_on_cluster(input_dir: Path, workdir: Path, banding: dict, dedup: dict, kill_after: float) -> dict:
    """The corpus stage submitted to cluster/local.sh's 3 nodes; `kill_after` seconds in, worker node 1's raylet
    is SIGKILLed (its workers, its actors and the object-store blocks it held go with it)."""
    env = {**ENV, "RAY_AUTH_MODE": "token"}
    subprocess.run(["bash", str(ROOT / "cluster" / "local.sh"), "down"], env=env, capture_output=True)
    up = subprocess.run(["bash", str(ROOT / "cluster" / "local.sh"), "up"], env=env, capture_output=True, text=True)
    if up.returncode != 0:
        sys.exit("cluster/local.sh up failed:\n" + up.stdout + up.stderr)
    killed = {}

    def kill(proc: subprocess.Popen) -> None:
        time.sleep(kill_after)
        victims = worker_raylets(1)
        killed["running"] = proc.poll() is None  # the job had not finished when the node died
        for v in victims:
            v.kill()
        killed["raylets"] = len(victims)
        print(f"  killed worker node 1 ({len(victims)} raylet) {kill_after:.0f} s in; job still running: "
              f"{killed['running']}", flush=True)

    try:
        result = run_ragworks(ROOT / "platform", input_dir, workdir, banding, dedup, submit=DASHBOARD, during=kill)
    finally:
        subprocess.run(["bash", str(ROOT / "cluster" / "local.sh"), "down"], env=env, capture_output=True)
    result["killed"] = killed
    return result


def check_cluster(one: dict, cluster: dict, n: int) -> None:
    """Must-show 2 of issue 18: the job finished after the kill, nothing lost, the same duplicates."""
    c = cluster["counts"]
    balanced = c["input_records"] == c["documents"] + c["duplicates"] + c["rejects"] == n
    same = cluster["flagged"] == one["flagged"]
    diff = set(cluster["flagged"].items()) ^ set(one["flagged"].items())
    print(f"\ncluster run, worker node 1 killed {'mid-stage' if cluster['killed'].get('running') else 'AFTER the job ended'}"
          f" ({cluster['killed'].get('raylets', 0)} raylet): counts {c}")
    print(f"  input = documents + duplicates + rejects = {n:,}: {'yes' if balanced else 'NO'}")
    print(f"  duplicates (doc -> kept doc) the same as on one node: {'yes' if same else 'NO'} "
          f"({len(cluster['flagged']):,} vs {len(one['flagged']):,}; {len(diff)} pairs differ)")


# ------------------------------------------------------------------ datatrove: MinHash dedup, four steps
def datatrove_pipeline(input_dir: str, out: str, bands: int, rows: int, tasks: int, workers: int) -> None:
    """Runs in a child process (the forkserver workers need this file's `__main__` guard)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    cfg = MinhashConfig(n_grams=SHINGLE_WORDS, num_buckets=bands, hashes_per_bucket=rows,
                        hash_config=HashConfig(precision=64))

    def read():  # the signature and filter steps must read the same files in the same order
        return JsonlReader(input_dir, text_key="text", id_key="id")

    signatures = LocalPipelineExecutor([read(), MinhashDedupSignature(f"{out}/sigs", config=cfg, language="eng")],
                                       tasks=tasks, workers=workers, logging_dir=f"{out}/logs/signatures")
    buckets = LocalPipelineExecutor([MinhashDedupBuckets(f"{out}/sigs", f"{out}/buckets", config=cfg)],
                                    tasks=cfg.num_buckets, workers=workers, logging_dir=f"{out}/logs/buckets",
                                    depends=signatures)
    clusters = LocalPipelineExecutor([MinhashDedupCluster(f"{out}/buckets", f"{out}/remove_ids", config=cfg,
                                                          save_cluster_id=True)],
                                     tasks=1, logging_dir=f"{out}/logs/clusters", depends=buckets)
    keep = LocalPipelineExecutor([read(),
                                  MinhashDedupFilter(f"{out}/remove_ids", load_cluster_ids=True,
                                                     exclusion_writer=JsonlWriter(f"{out}/removed", compression=None)),
                                  JsonlWriter(f"{out}/kept", compression=None)],
                                 tasks=tasks, workers=workers, logging_dir=f"{out}/logs/filter", depends=clusters)
    keep.run()


def run_datatrove(input_dir: Path, out: Path, bands: int, rows: int) -> dict:
    """The pipeline in a child process, measured; removed doc -> the kept doc of its cluster."""
    shutil.rmtree(out, ignore_errors=True)  # fresh logging dirs: completed ranks would be skipped
    out.mkdir(parents=True)
    tasks = len(list(input_dir.glob("*.jsonl")))
    command = [sys.executable, __file__, "--datatrove-child", str(input_dir), str(out), str(bands), str(rows),
               str(tasks), "2"]
    result = measure(command, ENV, out / "datatrove.log", is_worker=lambda name: True)

    def rows_of(folder: str):
        for f in sorted((out / folder).glob("*.jsonl")):
            for line in open(f):
                r = json.loads(line)
                yield r["id"], r["metadata"].get("minhash_cluster_id", -1)

    kept_of_cluster = {cid: doc_id for doc_id, cid in rows_of("kept") if cid != -1}
    result["flagged"] = {doc_id: kept_of_cluster[cid] for doc_id, cid in rows_of("removed")}
    result["stage_seconds"] = None
    return result


# ------------------------------------------------------------------ scoring against the truth
def score(flagged: dict[str, str], truth: dict, texts: dict[str, str]) -> dict:
    """flagged: duplicate id -> the id it was found to duplicate (its representative)."""

    def rep(doc_id: str) -> str:  # follow duplicate_of to a kept document (a duplicate of a duplicate)
        seen = set()
        while doc_id in flagged and doc_id not in seen:
            seen.add(doc_id)
            doc_id = flagged[doc_id]
        return doc_id

    exact = sum(rep(a) == rep(b) for a, b in truth["exact"])
    hits_by_bucket = defaultdict(lambda: [0, 0, 0.0])  # bucket -> [found, pairs, sum of J]
    for a, b, _, j in truth["near"]:
        bucket = next(i for i in range(len(BUCKET_EDGES) - 1) if j < BUCKET_EDGES[i + 1])
        h = hits_by_bucket[bucket]
        h[0] += rep(a) == rep(b)
        h[1] += 1
        h[2] += j
    should = [rep(a) == rep(b) for a, b, _, j in truth["near"] if j >= THRESHOLD + 0.05]
    true_j = [jaccard(shingles(texts[d]), shingles(texts[r])) for d, r in flagged.items()]
    good = sum(j >= THRESHOLD - 0.05 for j in true_j)
    return {"exact": exact, "recall": sum(should) / max(1, len(should)), "recall_n": len(should),
            "precision": good / max(1, len(true_j)), "flagged": len(true_j), "bad": len(true_j) - good,
            "buckets": dict(hits_by_bucket)}


# ------------------------------------------------------------------ the report
def report(results: dict[str, dict], truth: dict, n: int, bands: int, rows: int) -> None:
    names, runs = list(results), list(results.values())
    table = [
        ("wall seconds", [f"{r['seconds']:.1f}" for r in runs]),
        ("docs/s (N / wall)", [f"{n / r['seconds']:,.0f}" for r in runs]),
        ("CPU seconds (process tree)", ["-" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.0f}" for r in runs]),
        ("docs per CPU second", ["-" if r["cpu_seconds"] is None else f"{n / r['cpu_seconds']:,.0f}" for r in runs]),
        ("stage seconds (manifest)", ["-" if r["stage_seconds"] is None else f"{r['stage_seconds']:.1f}" for r in runs]),
        ("exact copies found", [f"{r['score']['exact']}/{len(truth['exact'])}" for r in runs]),
        (f"near recall (J>={THRESHOLD + 0.05:.2f})", [f"{r['score']['recall']:.3f} of {r['score']['recall_n']}"
                                                     for r in runs]),
        (f"precision (J>={THRESHOLD - 0.05:.2f})", [f"{r['score']['precision']:.3f} ({r['score']['bad']} of "
                                                   f"{r['score']['flagged']} low)" for r in runs]),
        ("driver peak RSS MB (VmHWM)", [f"{r['driver_mb']:.0f}" if r["driver_mb"] else "-" for r in runs]),
        ("  wait4 ru_maxrss MB", [f"{r['wait4_mb']:.0f}" for r in runs]),
        ("largest worker peak RSS MB", [f"{r['worker_mb']:.0f}" for r in runs]),
        ("  that worker", [r["worker"][:34] for r in runs]),
        ("largest worker private MB", [f"{r['private_mb']:.0f}" for r in runs]),
        ("  that worker", [r["private_worker"][:34] for r in runs]),
    ]
    widths = [max(len(name), *(len(cells[i]) for _, cells in table)) + 2 for i, name in enumerate(names)]
    print("\n" + " " * 28 + "".join(f"{x:>{w}}" for x, w in zip(names, widths)))
    for label, cells in table:
        print(f"{label:<28}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))

    new = next((x for x in names if x.startswith("ragworks (")), None)
    old = next((x for x in names if x.startswith("ragworks @")), None)
    dt = next((x for x in names if x.startswith("datatrove")), None)

    def ratio(a: str, b: str, key: str) -> float:  # docs/s of a over docs/s of b, by wall or CPU seconds
        return results[b][key] / results[a][key] if results[a][key] and results[b][key] else float("nan")

    print()
    if new and dt:
        print(f"docs/s ragworks / datatrove: {ratio(new, dt, 'seconds'):.2f} (per CPU second: "
              f"{ratio(new, dt, 'cpu_seconds'):.2f})")
    if new and old:
        wall = ratio(new, old, "seconds")
        print(f"docs/s new / old: {wall:.2f} (per CPU second: {ratio(new, old, 'cpu_seconds'):.2f}); "
              f"target >= 0.8 at 100k:", "met" if wall >= 0.8 else "NOT met")

    print(f"\nrecall per true-Jaccard bucket (S-curve); expected: P(candidate) = 1-(1-J^r)^b at the bucket's "
          f"mean J for datatrove's {bands} bands x {rows} rows")
    print(f"{'J bucket':<16}{'pairs':>7}{'mean J':>8}{'expected':>10}" + "".join(f"{x:>{w}}" for x, w in zip(names, widths)))
    for i in range(len(BUCKET_EDGES) - 1):
        cells = [r["score"]["buckets"].get(i) for r in runs]
        if not any(cells):
            continue
        _, pairs, total = next(c for c in cells if c)
        mean = total / pairs
        expected = 1 - (1 - mean**rows) ** bands
        print(f"[{BUCKET_EDGES[i]:.3f}, {min(1.0, BUCKET_EDGES[i + 1]):.3f}){pairs:>7}{mean:>8.3f}{expected:>10.3f}"
              + "".join(f"{c[0] / c[1]:>{w}.3f}" for c, w in zip(cells, widths)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000, help="documents in all, duplicates included")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", type=int, default=4, help="input files (datatrove runs one task per file)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/corpus_scale"))
    ap.add_argument("--bands", type=int, default=14, help="LSH bands of both (datatrove's num_buckets); "
                    "14 x 9 is what the corpus stage derives for threshold 0.9 and 128 permutations")
    ap.add_argument("--rows", type=int, default=9, help="rows per band (datatrove's hashes_per_bucket)")
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--skip-ragworks", action="store_true", help="skip this checkout's corpus stage")
    ap.add_argument("--baseline-commit", default="99f6764", metavar="REV",
                    help="also run the corpus stage of this commit (today's single-actor dedup); '' to skip")
    ap.add_argument("--cluster", action="store_true",
                    help="also submit the corpus stage to cluster/local.sh's 3 nodes and kill a worker node "
                    "mid-stage; check nothing is lost and the duplicates equal the one-node run's")
    ap.add_argument("--kill-after", type=float, default=None, metavar="S",
                    help="seconds into the cluster run to kill the node (default: 40%% of the one-node run)")
    ap.add_argument("--max-rows-in-one-task", type=int, default=None, metavar="N",
                    help="the corpus stage's dedup.max_rows_in_one_task, to force its partitioned path")
    ap.add_argument("--datatrove-child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.datatrove_child:
        input_dir, out, bands, rows, tasks, workers = args.datatrove_child
        datatrove_pipeline(input_dir, out, int(bands), int(rows), int(tasks), int(workers))
        return

    data = args.workdir / f"data-{args.docs}-seed{args.seed}-parts{args.parts}"
    if not (data / "truth.json").exists():
        t0 = time.perf_counter()
        shutil.rmtree(data, ignore_errors=True)
        generate(args.docs, args.seed, args.parts, data)
        print(f"generated {args.docs:,} documents in {args.parts} files in {time.perf_counter() - t0:.0f} s: {data}")
    truth = json.loads((data / "truth.json").read_text())
    texts = load_texts(data)
    assert len(texts) == args.docs, f"{data}: {len(texts)} documents, not {args.docs}"
    print(f"{args.docs:,} documents: {len(truth['exact'])} exact copies, {len(truth['near'])} near copies "
          f"(true J of the pairs {min(j for *_, j in truth['near']):.2f}..{max(j for *_, j in truth['near']):.2f})"
          f"; threshold {THRESHOLD}, {NUM_PERM} permutations, {SHINGLE_WORDS}-word shingles; "
          f"{os.cpu_count()} CPUs, shared with whatever else runs here")

    results = {}
    if not args.skip_ragworks:
        print("ragworks: this checkout's corpus stage ...", flush=True)
        dedup = {"max_rows_in_one_task": args.max_rows_in_one_task} if args.max_rows_in_one_task else {}
        banding = {"bands": args.bands, "rows": args.rows}
        results["ragworks (checkout)"] = run_ragworks(ROOT / "platform", data / "input", args.workdir / "ragworks",
                                                      banding, dedup)
        if args.cluster:
            kill_after = args.kill_after or 0.4 * results["ragworks (checkout)"]["seconds"]
            print(f"ragworks: the same stage on cluster/local.sh's 3 nodes, worker node 1 killed at {kill_after:.0f} s ...",
                  flush=True)
            cluster = run_on_cluster(data / "input", args.workdir / "cluster", banding, dedup, kill_after)
            results["ragworks (3 nodes, 1 killed)"] = cluster
    if args.baseline_commit:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline_commit],
                             capture_output=True, text=True, check=True).stdout.strip()
        tree = args.workdir / f"baseline-{rev}"
        if not (tree / "platform").exists():  # the commit's files only (git archive): no worktree to clean up
            tree.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "platform"], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        print(f"ragworks: the corpus stage of {rev} ...", flush=True)
        results[f"ragworks @{rev}"] = run_ragworks(tree / "platform", data / "input", args.workdir / "baseline")
    if not args.skip_datatrove:
        print(f"datatrove: MinHash dedup, {args.bands} bands x {args.rows} rows, 2 workers ...", flush=True)
        results[f"datatrove {args.bands}x{args.rows}"] = run_datatrove(data / "input", args.workdir / "datatrove",
                                                                      args.bands, args.rows)
    for r in results.values():
        r["score"] = score(r["flagged"], truth, texts)
    report(results, truth, args.docs, args.bands, args.rows)
    if args.cluster and not args.skip_ragworks:
        check_cluster(results["ragworks (checkout)"], results["ragworks (3 nodes, 1 killed)"], args.docs)


if __name__ == "__main__":
    main()

"""Stage `gate`: the base and the tuned index scored where the server will use them; the winner is served.

Training picks its checkpoint on held-out pairs ranked in a small pool, in dense
mode; the server searches the whole table, in hybrid mode by default. A tuned
model can win the first and lose the second (the SciFact flagship did: tuned
hybrid 0.7337 vs base 0.7354), so before anything is served both indexes answer
the same queries in every mode the server uses: the held-out synthetic queries
(no step trained on them; relevant: their own chunk) and, when the spec names
one, a labelled BEIR dev set, which then decides. Tuned is served only if it
gains more than `min_gain` nDCG@10 in every gated mode; a tie serves base.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pyarrow.parquet as pq

from .config import GateConfig

from rich.table import Table

from ..beir import load_qrels, load_queries
from ..index import open_index
from ..manifest import files_fingerprint
from ..progress import table as progress_table
from ..runtime import limit_torch_threads
from ..stage import StageError
from ..storage import Folder
from ..train.config import DevSetConfig
from . import GateOutputs
from .retrieval import score_modes

INDEXES = {"base": "index", "tuned": "index_tuned"}


def external_inputs(cfg: GateConfig) -> dict:
    if cfg.dev is None:
        return {}
    folder = Path(cfg.dev.dataset)
    return {"dev": {name: files_fingerprint(folder / name) for name in ("queries.jsonl", f"qrels/{cfg.dev.split}.tsv")}}


def heldout_queries(path: str, max_queries: int) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """The held-out synthetic queries (at most `max_queries`, drawn by a hash of the text), each judged by its
    own chunk."""
    rows = [r for f in Folder(path).files(".parquet") for r in pq.read_table(f.path, filesystem=f.fs).to_pylist()]
    rows = sorted(rows, key=lambda r: (zlib.crc32(r["query"].encode()), r["query"], r["positive_id"]))[:max_queries]
    queries = {f"heldout-{i}": r["query"] for i, r in enumerate(rows)}
    return queries, {f"heldout-{i}": {r["positive_id"]: 1} for i, r in enumerate(rows)}


def dev_queries(cfg: DevSetConfig) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """A BEIR dev set's first `max_queries` judged queries by id."""
    qrels = load_qrels(cfg.dataset, cfg.split)
    queries = load_queries(cfg.dataset, set(qrels))
    qids = sorted(q for q in queries if any(s > 0 for s in qrels[q].values()))[: cfg.max_queries]
    if not qids:
        raise StageError(f"{cfg.dataset}: no judged queries for split '{cfg.split}'", "check gate.dev")
    return {q: queries[q] for q in qids}, {q: qrels[q] for q in qids}


def decide(cfg: GateConfig, gains: dict[str, float]) -> str:
    if cfg.serve != "auto":
        return cfg.serve
    return "tuned" if all(g > cfg.min_gain for g in gains.values()) else "base"


def run(cfg: GateConfig, ctx) -> GateOutputs:
    limit_torch_threads()
    trained = ctx.output("train_retriever")
    if trained.heldout is None:
        raise StageError("train_retriever kept no held-out queries (a run from before the gate)",
                         "re-run it: ragworks run SPEC --force train_retriever")
    sets = {"heldout": (*heldout_queries(trained.heldout, cfg.max_queries), "id")}
    if cfg.dev is not None:
        sets["dev"] = (*dev_queries(cfg.dev), "doc_id")
    decided_on = "dev" if cfg.dev is not None else "heldout"
    if not sets[decided_on][0]:
        raise StageError("no held-out synthetic queries to gate on", "raise train_retriever.validation_fraction")

    scores: dict[str, dict[str, dict[str, float]]] = {}
    for name, (queries, qrels, key) in sets.items():
        scores[name] = {}
        for which, stage in INDEXES.items():
            found = score_modes(open_index(ctx.output(stage)), queries, qrels, cfg.modes, candidates=cfg.candidates,
                                key=key, console=ctx.console)
            scores[name].update({f"{mode} ({which})": found[mode] for mode in cfg.modes})
    decisive = scores[decided_on]
    gains = {mode: decisive[f"{mode} (tuned)"]["ndcg@10"] - decisive[f"{mode} (base)"]["ndcg@10"] for mode in cfg.modes}
    winner = decide(cfg, gains)
    out = GateOutputs(serve=INDEXES[winner], winner=winner, decided_on=decided_on, forced=cfg.serve != "auto",
                      gains=gains, scores=scores, min_gain=cfg.min_gain,
                      counts={f"{name}_queries": len(sets[name][0]) for name in sets})
    ctx.console.print(gate_table(out))
    ctx.console.print(f"serving the {winner} index ({out.reason()})")
    return out


def gate_table(out: GateOutputs) -> Table:
    table = progress_table("ship gate: nDCG@10, base vs tuned")
    for head in ("queries", "mode", "base", "tuned", "gain", ""):
        table.add_column(head, justify="right")
    for name, labels in out.scores.items():
        for mode in out.gains:
            base, tuned = labels[f"{mode} (base)"]["ndcg@10"], labels[f"{mode} (tuned)"]["ndcg@10"]
            table.add_row(name, mode, f"{base:.4f}", f"{tuned:.4f}", f"{tuned - base:+.4f}",
                          "decides" if name == out.decided_on else "")
    return table

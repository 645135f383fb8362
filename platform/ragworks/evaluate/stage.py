"""Stage `evaluate`: judged queries -> search in every mode -> metrics -> report."""

from __future__ import annotations

from pathlib import Path

from ..config import EvaluateConfig, JobSpec
from ..index import open_index
from ..manifest import files_fingerprint
from ..runtime import limit_torch_threads
from .beir import load_qrels, load_queries
from .metrics import evaluate_run
from .report import metrics_table, write_report


def external_inputs(spec: JobSpec) -> dict:
    folder = Path(spec.evaluate.dataset)
    return {"queries": files_fingerprint(folder / "queries.jsonl"),
            "qrels": files_fingerprint(folder / "qrels" / f"{spec.evaluate.split}.tsv")}


def rank_documents(hits: list[dict], k: int) -> list[str]:
    """Chunk hits to document ranking: a document ranks where its best chunk does."""
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(h["doc_id"], None)
        if len(seen) == k:
            break
    return list(seen)


def run(cfg: EvaluateConfig, ctx) -> dict:
    limit_torch_threads()
    qrels = load_qrels(cfg.dataset, cfg.split)
    queries = load_queries(cfg.dataset, set(qrels))
    missing = set(qrels) - set(queries)
    if missing:
        raise ValueError(f"{cfg.dataset}: {len(missing)} judged queries are not in queries.jsonl, e.g. {sorted(missing)[:3]}")
    searcher = open_index(ctx.input_dir("index"), rrf_k=cfg.rrf_k)
    qids = sorted(queries)
    texts = [queries[q] for q in qids]
    ctx.console.print(f"evaluating {len(qids)} judged queries of {cfg.dataset} ({cfg.split}) in modes {cfg.modes}")
    vectors = searcher.embed(texts, batch_size=cfg.batch_size) if set(cfg.modes) & {"dense", "hybrid"} else None

    from rich.progress import track

    metrics = {}
    for mode in cfg.modes:
        run_ = {}
        for i in track(range(len(qids)), description=f"{mode:>8}", console=ctx.console, transient=True):
            vec = vectors[i] if vectors is not None else None
            hits = searcher.search(texts[i], mode=mode, k=cfg.candidates, vector=vec)
            run_[qids[i]] = rank_documents(hits, 100)
        metrics[mode] = evaluate_run(run_, qrels)

    report = {
        "dataset": cfg.dataset, "dataset_name": Path(cfg.dataset).name, "split": cfg.split,
        "queries": len(qids), "chunks": ctx.inputs["index"]["counts"]["rows"],
        "embedder": ctx.inputs["index"]["embedder"], "metrics": metrics,
        "timings": {name: m["seconds"] for name, m in ctx.inputs.items() if "seconds" in m},
    }
    paths = write_report(report, ctx.stage_dir)
    ctx.console.print(metrics_table(metrics, f"{report['dataset_name']} {cfg.split}: {len(qids)} queries"))
    ctx.console.print(f"report: {paths['markdown']}")
    return {"outputs": paths, "metrics": metrics, "counts": {"queries": len(qids)}}

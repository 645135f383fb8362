"""Stage `evaluate`: judged queries -> search in every mode -> metrics -> report."""

from __future__ import annotations

from pathlib import Path

from ..beir import load_qrels, load_queries
from ..index import open_index
from ..index.rerank import Reranker, rerank_model
from ..manifest import files_fingerprint
from ..runtime import limit_torch_threads
from ..stage import StageError
from ..storage import staged
from . import EvaluateOutputs
from .config import EvaluateConfig
from .generation import answer_metrics
from .report import metrics_table, query_samples, stage_rows, write_report
from .retrieval import score_modes


def external_inputs(cfg: EvaluateConfig) -> dict:
    folder = Path(cfg.dataset)
    return {"queries": files_fingerprint(folder / "queries.jsonl"),
            "qrels": files_fingerprint(folder / "qrels" / f"{cfg.split}.tsv")}


def indexes_to_score(ctx) -> dict[str, str]:
    """Label suffix -> index stage: base and tuned side by side when the job re-indexed with its trained model."""
    if not ctx.has("index_tuned"):
        return {"": "index"}
    return {" (base)": "index", " (tuned)": "index_tuned"}


def run(cfg: EvaluateConfig, ctx) -> EvaluateOutputs:
    limit_torch_threads()
    qrels = load_qrels(cfg.dataset, cfg.split)
    queries = load_queries(cfg.dataset, set(qrels))
    missing = set(qrels) - set(queries)
    if missing:
        raise StageError(f"{cfg.dataset}: {len(missing)} judged queries are not in queries.jsonl, e.g. "
                         f"{sorted(missing)[:3]}", f"check qrels/{cfg.split}.tsv against queries.jsonl")
    qids = sorted(queries)
    ctx.console.print(f"evaluating {len(qids)} judged queries of {cfg.dataset} ({cfg.split}) in modes {cfg.modes}")

    reranker = None
    if cfg.rerank is not None:
        trained = ctx.output("train_reranker").model if ctx.has("train_reranker") else None
        reranker = Reranker(cfg.rerank, rerank_model(cfg.rerank, trained))
        ctx.console.print(f"re-ranking the top {cfg.rerank.top_k} hits of {', '.join(cfg.rerank_modes)} with "
                          f"{reranker.model_path}")
    metrics, embedders = {}, {}
    for suffix, stage in indexes_to_score(ctx).items():
        embedders[stage] = ctx.output(stage).embedder
        metrics.update(score_modes(open_index(ctx.output(stage)), queries, qrels, cfg.modes, suffix=suffix,
                                   candidates=cfg.candidates, batch_size=cfg.batch_size, reranker=reranker,
                                   rerank_modes=cfg.rerank_modes,
                                   console=ctx.console, skip=set(metrics)))

    generation = samples = None
    if ctx.has("train_generator"):
        generation, samples = answer_metrics(cfg.generation, ctx.output("train_generator"), ctx.console)

    report = {
        "dataset": cfg.dataset, "dataset_name": Path(cfg.dataset).name, "split": cfg.split,
        "queries": len(qids), "chunks": ctx.output("index").counts["rows"],
        "embedder": ", ".join(f"{k}: {v}" for k, v in embedders.items()), "embedders": embedders, "metrics": metrics,
        "stages": stage_rows(ctx.job),
        **({"generation": generation, "answer_samples": samples} if generation else {}),
    }
    if ctx.has("filters"):
        filters = ctx.output("filters")
        report["query_samples"] = query_samples(filters.kept, filters.dropped)
    if ctx.has("gate"):
        report["gate"] = ctx.output("gate").model_dump(exclude={"counts"})
    with staged(ctx.stage_dir) as local:
        written = write_report(report, local)
    paths = {k: str(ctx.stage_dir / Path(v).name) for k, v in written.items()}
    ctx.console.print(metrics_table(metrics, f"{report['dataset_name']} {cfg.split}: {len(qids)} queries"))
    if generation:
        ctx.console.print(metrics_table(generation, "answers on held-out RAG examples"))
    ctx.console.print(f"report: {paths['html']} (and report.md)")
    return EvaluateOutputs(report=paths["json"], markdown=paths["markdown"], html=paths["html"], chart=paths["chart"],
                           answers_chart=paths.get("answers_chart"), metrics=metrics, generation=generation,
                           counts={"queries": len(qids)})

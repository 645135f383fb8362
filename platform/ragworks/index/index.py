"""Stage `index`: chunks -> embeddings (actor pool) -> LanceDB table -> ANN and full-text indexes."""

from __future__ import annotations

import lancedb
import ray

from ..corpus.delta import documents
from ..lance_sink import LanceFragments
from ..runtime import actor_pool
from ..stage import StageError
from . import IndexOutputs
from .config import IndexConfig
from .embed import Embed
from .update import applicable, apply_delta, tag

TABLE_COLUMNS = ["id", "doc_id", "chunk_index", "n_tokens", "title", "text", "source", "line", "metadata", "doc_hash",
                 "chunk_hash"]


def ann_config(cfg: IndexConfig):
    from lancedb import index

    kinds = {"IVF_PQ": index.IvfPq, "IVF_FLAT": index.IvfFlat, "IVF_SQ": index.IvfSq,
             "IVF_HNSW_SQ": index.IvfHnswSq, "IVF_HNSW_PQ": index.IvfHnswPq}
    return kinds[cfg.ann.index_type](distance_type=cfg.metric, num_partitions=cfg.ann.num_partitions)


def write_table(db_dir: str, name: str, ds: ray.data.Dataset, rows_per_write: int = 65_536):
    """The embedded blocks as one LanceDB table, written by the workers that hold them and committed once
    (`LanceFragments`, a fragment per `rows_per_write` rows): the driver never holds a vector, however large
    the corpus."""
    sink = LanceFragments(f"{db_dir}/{name}.lance", rows_per_write)
    ds.write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
    if not sink.rows:
        raise StageError("the corpus stage produced no chunks to index")
    return lancedb.connect(db_dir).open_table(name)


def add_indexes(table, cfg: IndexConfig, console) -> list[str]:
    """The ANN index once the table reaches `ann.min_rows` (below it exact search is as fast), and the
    full-text index; returns their names."""
    rows, indexes = table.count_rows(), []
    if rows >= max(cfg.ann.min_rows, 1):
        console.print(f"building {cfg.ann.index_type} vector index over {rows:,} rows")
        table.create_index("vector", config=ann_config(cfg))
        indexes.append(cfg.ann.index_type)
    if cfg.fulltext.enabled:
        create_fts(table, cfg)
        indexes.append("FTS")
    return indexes


def create_fts(table, cfg: IndexConfig) -> None:
    from lancedb.index import FTS

    table.create_index("text", config=FTS(language=cfg.fulltext.language, stem=cfg.fulltext.stem,
                                          remove_stop_words=cfg.fulltext.remove_stop_words), replace=True)


def run(cfg: IndexConfig, ctx) -> IndexOutputs:
    """'trained' means the base model here: training mines this index; `index_tuned` re-embeds after it."""
    return build(cfg, ctx, "base" if cfg.embedder == "trained" else cfg.embedder)


def build(cfg: IndexConfig, ctx, embedder: str) -> IndexOutputs:
    corpus = ctx.output("corpus")
    if not corpus.counts.get("chunks"):
        raise StageError(f"the corpus stage produced no chunks to index ({corpus.counts.get('rejects', 0):,} records "
                         f"rejected, {corpus.counts.get('duplicates', 0):,} duplicates)",
                         f"check corpus.source; the reasons are in {corpus.rejects}")
    def embed(ds: ray.data.Dataset) -> ray.data.Dataset:
        # Small blocks so every actor in the pool gets work (a file is otherwise one block).
        ds = ds.repartition(target_num_rows_per_block=cfg.batch_size * 4)
        return ds.map_batches(Embed, fn_constructor_args=(embedder, cfg.batch_size, cfg.num_gpus),
                              batch_size=cfg.batch_size, batch_format="pyarrow",
                              **actor_pool(cfg.concurrency, cfg.num_cpus, cfg.num_gpus, cfg.resources))

    before, why = applicable(ctx, corpus, embedder)
    if before is not None:
        counts = corpus.delta.counts
        ctx.console.print(f"updating the index in place with the corpus delta ({documents(counts.get('upsert', 0))} "
                          f"to embed, {counts.get('replace', 0):,} to replace), with {embedder}", highlight=False)
        return apply_delta(cfg, ctx, corpus, before, embed)
    if ctx.previous is not None:
        ctx.console.print(f"rebuilding the index: {why}")
    chunks_dir = corpus.chunks
    db_dir = ctx.stage_dir / "lancedb"
    ctx.console.print(f"embedding {chunks_dir} with {embedder}, actors {tuple(cfg.concurrency)}")
    table = write_table(str(db_dir), cfg.table, embed(ray.data.read_parquet(chunks_dir).select_columns(TABLE_COLUMNS)))
    rows = table.count_rows()
    indexes = add_indexes(table, cfg, ctx.console)
    table = lancedb.connect(str(db_dir)).open_table(cfg.table)
    tag(f"{db_dir}/{cfg.table}.lance", table.version)
    exact = "" if cfg.ann.index_type in indexes else f" (vector search exact below ann.min_rows={cfg.ann.min_rows:,})"
    ctx.console.print(f"LanceDB table '{cfg.table}' in {db_dir}: {rows:,} rows, indexes: "
                      f"{', '.join(indexes) or 'none'}{exact}", highlight=False)
    return IndexOutputs(lancedb=str(db_dir), table=cfg.table, embedder=embedder, metric=cfg.metric,
                        nprobes=cfg.ann.nprobes, ef=cfg.ann.ef, refine_factor=cfg.ann.refine_factor,
                        hybrid=cfg.hybrid.model_dump(),
                        indexes=indexes, version=table.version, ann_rows=rows if cfg.ann.index_type in indexes else 0,
                        counts={"rows": rows})

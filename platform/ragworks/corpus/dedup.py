"""Exact and near-duplicate detection as keyed, hash-partitioned passes.

Dedup is global, but no process has to see every document: copies share a key
(the id, the content hash, an LSH band key), so a hash shuffle on that key
brings them together and each partition decides on its own. The copy kept is
the earliest by (file, line), `pos`, which is "first copy wins" for one file
read in order, whatever order Ray runs the blocks in; every other copy becomes
a `duplicate` row naming the kept one (a `reject` for a repeated id).

Near duplicates follow the large-scale recipe of datatrove and NeMo Curator:
MinHash signatures (Broder 1997; computed by rensa) in a parallel map, one key
per LSH band (Leskovec, Rajaraman & Ullman, Mining of Massive Datasets, ch. 3),
candidate pairs within a band bucket (a star to its earliest member), a check of
each pair's estimated Jaccard, and connected components of what remains: in one
task while the pairs fit `max_rows_in_one_task` (scipy), otherwise by min-label
propagation over Ray Data joins, where only edge and label blocks move. Each
component keeps its earliest document.

Up to `max_rows_in_one_task` documents, the same functions run on the whole key
table in one task: a shuffle costs more than it saves on a small corpus.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.expressions import col

from ..checkpoint import Checkpoints
from ..ordering import first_of_key, per_key
from .config import DedupConfig, NearDedupConfig
from .normalize import document_hash
from .records import set_column

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
POS_STRIDE = 1 << 40  # pos = file index * POS_STRIDE + line: the order key "earliest copy" means
SEED = 1  # MinHash permutations and band hashes: the same in every worker
KEYS_BATCH = 4096  # documents per doc_keys call: every shingle of a whole block at once is GBs
MAX_ITER = 50  # label propagation rounds; a component's diameter bounds what it needs
# apply_decisions is a join per block: a whole CPU slot held by a task that waits on the chunkers downstream
# (backpressure) left a 1M-document run's second chunker no CPU to start on
LIGHT = {"batch_format": "pyarrow", "num_cpus": 0.25}
DECISIONS = pa.schema([("pos", pa.int64()), ("d_kind", pa.string()), ("d_of", pa.string()),
                       ("d_reason", pa.string())])
EDGES = pa.schema([("u", pa.int64()), ("u_id", pa.string()), ("v", pa.int64()), ("v_id", pa.string())])
SYMMETRIC = pa.schema([("a", pa.int64()), ("b", pa.int64())])
LABELS = pa.schema([("node", pa.int64()), ("label", pa.int64())])


# ------------------------------------------------------------------ keys
def shingles(text: str, n: int) -> list[str]:
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(words[i: i + n]) for i in range(len(words) - n + 1)]


def lsh_params(near: NearDedupConfig) -> tuple[int, int]:
    """(bands, rows): what the spec says, else the most rows per band (the fewest candidates far below the
    threshold) that still make a pair at the threshold a candidate 99.5% of the time, 1 - (1 - t^r)^b."""
    p, t = near.num_perm, near.threshold
    if near.bands and near.rows:
        return near.bands, near.rows
    if near.rows:
        return max(1, p // near.rows), near.rows
    if near.bands:
        return near.bands, max(1, p // near.bands)
    for r in range(p, 0, -1):
        b = p // r
        if 1 - (1 - t ** r) ** b >= 0.995:
            return b, r
    return p, 1


def add_positions(batch: pa.Table, files: dict[str, int]) -> pa.Table:
    """The explicit order key: nothing downstream relies on the order Ray delivers rows in."""
    lines = batch["line"].fill_null(0).to_numpy()
    index = np.array([files[s] for s in batch["source"].to_pylist()], dtype=np.int64)
    pos = pa.array(index * POS_STRIDE + lines, pa.int64())
    return set_column(batch, "pos", pos)  # a carried record has one: its file's place in this run's order


def _as_fixed_binary(matrix: np.ndarray) -> pa.Array:
    matrix = np.ascontiguousarray(matrix)
    width = matrix.shape[1] * matrix.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(matrix), [None, pa.py_buffer(matrix.tobytes())])


def signature_matrix(col: pa.ChunkedArray | pa.Array, num_perm: int) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_fixed_size_binary(arr.type):  # a join hands it back as plain binary
        arr = arr.cast(pa.binary(4 * num_perm))
    flat = np.frombuffer(arr.buffers()[1], dtype=np.uint32)
    start = arr.offset * num_perm
    return flat[start: start + len(arr) * num_perm].reshape(len(arr), num_perm)


def signatures(texts: list[str], near: NearDedupConfig) -> pa.Array:
    from rensa import RMinHash

    sets = [shingles(t, near.shingle_words) for t in texts]
    rows = RMinHash.digest_matrix_from_token_sets(sets, num_perm=near.num_perm, seed=SEED).to_rows() if sets else []
    return _as_fixed_binary(np.asarray(rows, dtype=np.uint32).reshape(len(sets), near.num_perm))


def key_schema(cfg: DedupConfig) -> pa.Schema:
    fields = [("pos", pa.int64()), ("doc_id", pa.string())]
    fields += [("chash", pa.binary(20))] if cfg.exact else []
    fields += [("sig", pa.binary(4 * cfg.near.num_perm))] if cfg.near.enabled else []
    return pa.schema(fields)


def with_keys(batch: pa.Table, cfg: DedupConfig) -> pa.Table:
    """Every row with what dedup compares (`chash`, the content hash; `sig`, the MinHash signature; null
    for rows that are not documents), computed where missing: the corpus keeps them beside each record, so
    a re-run over a changed corpus signs only the documents it has not seen."""
    schema = key_schema(cfg)
    is_doc = pc.equal(batch["kind"], "doc").fill_null(False).to_numpy(zero_copy_only=False)
    docs = batch.filter(pa.array(is_doc))
    where = np.flatnonzero(is_doc)
    for name in ("chash", "sig"):
        if name not in schema.names or name in batch.column_names:
            continue
        if name == "chash":
            hashes = docs["doc_hash"].to_pylist() if "doc_hash" in docs.column_names else [None] * docs.num_rows
            values = pa.array([bytes.fromhex(h or document_hash(a, b)) for h, a, b in
                               zip(hashes, docs["title"].to_pylist(), docs["text"].to_pylist())], pa.binary(20))
        else:
            values = signatures(docs["text"].to_pylist(), cfg.near)
        batch = batch.append_column(schema.field(name), _scatter(values, where, batch.num_rows))
    return batch


def _scatter(values: pa.Array, where: np.ndarray, n: int) -> pa.Array:
    """`values` at rows `where` of an n-row column, null elsewhere."""
    index = np.full(n, -1, dtype=np.int64)
    index[where] = np.arange(len(where))
    return values.take(pa.array(index, mask=index < 0))


def doc_keys(batch: pa.Table, cfg: DedupConfig) -> pa.Table:
    """Per document: its order key and id, and what dedup compares (content hash, MinHash signature)."""
    batch = with_keys(batch, cfg)
    return batch.filter(pc.equal(batch["kind"], "doc")).select(key_schema(cfg).names)


# ------------------------------------------------------------------ per-partition decisions
def _decisions(pos, kind: str, of: pa.Array, reasons: list[str]) -> pa.Table:
    n = len(pos)
    return pa.table({"pos": pa.array(pos, pa.int64()), "d_kind": pa.array([kind] * n, pa.string()),
                     "d_of": of.cast(pa.string()), "d_reason": pa.array(reasons, pa.string())}, schema=DECISIONS)


def split_repeated_ids(t: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(first record of each id, rejects for the later ones): an id names one document."""
    t, first = first_of_key(t, "doc_id", "pos")
    later = first != np.arange(t.num_rows)
    ids = t["doc_id"].filter(pa.array(later)).to_pylist()
    rejects = _decisions(t["pos"].to_numpy()[later], "reject", pa.nulls(len(ids), pa.string()),
                         [f"duplicate id '{i}' (an earlier record has the same id)" for i in ids])
    return t.filter(pa.array(~later)), rejects


def split_exact(t: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(first copy of each content, `exact duplicate` decisions for the other copies)."""
    t, first = first_of_key(t, "chash", "pos")
    later = first != np.arange(t.num_rows)
    of = t["doc_id"].take(pa.array(first[later]))
    dups = _decisions(t["pos"].to_numpy()[later], "duplicate", of, [f"exact duplicate of {o}" for o in of.to_pylist()])
    return t.filter(pa.array(~later)), dups


def band_keys(sigs: pa.ChunkedArray | pa.Array, near: NearDedupConfig) -> np.ndarray:
    """(documents, bands): a 64-bit hash of each band's MinHash values (and of the band's number), so that
    documents equal on a band share a key."""
    bands, rows = lsh_params(near)
    sig = signature_matrix(sigs, near.num_perm)[:, : bands * rows].astype(np.uint64)
    rng = np.random.default_rng(SEED)
    mult = rng.integers(1, 1 << 62, size=(bands, rows), dtype=np.uint64) | np.uint64(1)
    salt = rng.integers(1, 1 << 62, size=bands, dtype=np.uint64)
    keys = np.empty((len(sig), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            keys[:, j] = (sig[:, j * rows: (j + 1) * rows] * mult[j]).sum(axis=1, dtype=np.uint64) ^ salt[j]
    return keys


def band_rows(t: pa.Table, near: NearDedupConfig) -> pa.Table:
    """One row per (document, band) with the band's key (`band_keys`)."""
    keys = band_keys(t["sig"], near)
    idx = pa.array(np.repeat(np.arange(t.num_rows), keys.shape[1]))
    return pa.table({"bkey": pa.array(keys.ravel()), "pos": t["pos"].take(idx), "doc_id": t["doc_id"].take(idx)})


def star_edges(t: pa.Table) -> pa.Table:
    """Candidate pairs of one band bucket: every member to the bucket's earliest (a star, diameter 2,
    where a chain would make label propagation walk the whole bucket)."""
    t, first = first_of_key(t, "bkey", "pos")
    later = pa.array(first != np.arange(t.num_rows))
    head = pa.array(first).filter(later)
    return pa.table({"u": t["pos"].take(head), "u_id": t["doc_id"].take(head),
                     "v": t["pos"].filter(later), "v_id": t["doc_id"].filter(later)})


def unique_edges(e: pa.Table) -> pa.Table:
    """A pair found in several bands once (a pair at J = 0.95 shares most bands)."""
    e = e.drop_columns([c for c in ("pair",) if c in e.column_names])
    if e.num_rows == 0:
        return e
    _, idx = np.unique(np.stack([e["u"].to_numpy(), e["v"].to_numpy()], axis=1), axis=0, return_index=True)
    return e.take(pa.array(idx))


def with_pair_key(e: pa.Table) -> pa.Table:
    """(u, v) as one 16-byte key, to bring every copy of a pair to one partition."""
    pair = np.stack([e["u"].to_numpy(), e["v"].to_numpy()], axis=1).astype(np.int64) if e.num_rows else \
        np.zeros((0, 2), dtype=np.int64)
    return e.append_column("pair", _as_fixed_binary(pair))


def similar(sig_u: np.ndarray, sig_v: np.ndarray, threshold: float) -> np.ndarray:
    """The share of permutations on which two signatures agree estimates their Jaccard (Broder 1997)."""
    return (sig_u == sig_v).mean(axis=1) >= threshold if len(sig_u) else np.zeros(0, dtype=bool)


def verify_local(edges: pa.Table, keys: pa.Table, near: NearDedupConfig) -> pa.Table:
    pos = keys["pos"].to_numpy()
    order = np.argsort(pos)
    sig = signature_matrix(keys["sig"], near.num_perm)
    at = lambda p: order[np.searchsorted(pos, p, sorter=order)]  # noqa: E731
    keep = similar(sig[at(edges["u"].to_numpy())], sig[at(edges["v"].to_numpy())], near.threshold)
    return edges.filter(pa.array(keep))


def verify_joined(batch: pa.Table, near: NearDedupConfig) -> pa.Table:
    keep = similar(signature_matrix(batch["sig_u"], near.num_perm), signature_matrix(batch["sig_v"], near.num_perm),
                   near.threshold)
    return batch.select(["u", "u_id", "v", "v_id"]).filter(pa.array(keep))


def components_local(edges: pa.Table) -> pa.Table:
    """`near duplicate` decisions: every document of a connected component but its earliest."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = edges.num_rows if edges is not None else 0
    if m == 0:
        return DECISIONS.empty_table()
    allpos = np.concatenate([edges["u"].to_numpy(), edges["v"].to_numpy()])
    ids = pa.concat_arrays([edges["u_id"].combine_chunks(), edges["v_id"].combine_chunks()])
    nodes, first, inverse = np.unique(allpos, return_index=True, return_inverse=True)
    n = len(nodes)
    graph = coo_matrix((np.ones(m, dtype=np.int8), (inverse[:m], inverse[m:])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    rep = np.full(label.max() + 1, n)
    np.minimum.at(rep, label, np.arange(n))  # nodes are sorted by pos: the smallest index is the earliest
    rep_of = rep[label]
    dup = rep_of != np.arange(n)
    of = ids.take(pa.array(first[rep_of[dup]]))
    return _decisions(nodes[dup], "duplicate", of, [f"near duplicate of {o}" for o in of.to_pylist()])


def decide_in_one_task(cfg: DedupConfig, keys: pa.Table | None) -> pa.Table:
    """Every decision for a key table small enough for one process: the partitioned passes' own functions."""
    if keys is None or keys.num_rows == 0:
        return DECISIONS.empty_table()
    keys, out = split_repeated_ids(keys)
    decided = [out]
    if cfg.exact:
        keys, dups = split_exact(keys)
        decided.append(dups)
    if cfg.near.enabled:
        edges = unique_edges(star_edges(band_rows(keys, cfg.near)))
        if cfg.near.verify:
            edges = verify_local(edges, keys, cfg.near)
        decided.append(components_local(edges))
    return pa.concat_tables(decided)


# ------------------------------------------------------------------ partitioned passes
def _both_sides(fn):
    """One call of a rule per partition, its two outputs (kept keys, decisions) in one table: the columns
    each lacks are null, and a decision is a row with `d_kind`."""
    def both(t: pa.Table) -> pa.Table:
        kept, decided = fn(t)
        return pa.concat_tables([kept, decided], promote_options="default")
    return both


def _partitioned_split(keys, fn, key: str, partitions: int, keep: Checkpoints, name: str, schema: pa.Schema):
    """(kept keys, decisions) of one keyed rule, from one pass over the partitions of a hash shuffle on `key`."""
    both = keep(name, per_key(keys, key, _both_sides(fn), partitions),
                pa.unify_schemas([schema, DECISIONS]))
    kept = both.filter(expr=col("d_kind").is_null()).select_columns(schema.names)
    return kept, both.filter(expr=col("d_kind").is_not_null()).select_columns(DECISIONS.names)


def _select(names: dict[str, str]):
    """A join's output reduced to `names` (old -> new): join outputs keep the right side's key and suffixes."""
    def select(t: pa.Table) -> pa.Table:
        return pa.table({new: t[old] for old, new in names.items()})
    return select


def verify_partitioned(edges, keys, near: NearDedupConfig, partitions: int):
    sigs = keys.select_columns(["pos", "sig"])
    cols = {c: c for c in ("u", "u_id", "v", "v_id")}
    edges = edges.join(sigs, "inner", partitions, on=("u",), right_on=("pos",)) \
        .map_batches(_select({**cols, "sig": "sig_u"}), batch_format="pyarrow")
    edges = edges.join(sigs, "inner", partitions, on=("v",), right_on=("pos",)) \
        .map_batches(_select({**cols, "sig_u": "sig_u", "sig": "sig_v"}), batch_format="pyarrow")
    return edges.map_batches(verify_joined, fn_kwargs={"near": near}, batch_format="pyarrow")


def _both_directions(t: pa.Table) -> pa.Table:
    return pa.table({"a": pa.concat_arrays([t["u"].combine_chunks(), t["v"].combine_chunks()]),
                     "b": pa.concat_arrays([t["v"].combine_chunks(), t["u"].combine_chunks()])})


def _min_label(t: pa.Table) -> pa.Table:
    return pa.table({"node": t["node"], "label": t["min(label)"]})


def components_partitioned(edges, keys, partitions: int, keep: Checkpoints):
    """Min-label propagation (connected components by repeated neighbour minima, as in Hash-Min, Rastogi et
    al. 2013): each round one join of edges with labels and one group-by; it stops when no label falls."""
    sym = keep("symmetric", edges.map_batches(_both_directions, batch_format="pyarrow"), SYMMETRIC)
    own = sym.map_batches(lambda t: pa.table({"node": t["a"], "label": t["a"]}), batch_format="pyarrow")
    labels = keep("labels-0", own.union(sym.map_batches(lambda t: pa.table({"node": t["a"], "label": t["b"]}),
                                                        batch_format="pyarrow"))
                  .groupby("node").min("label").map_batches(_min_label, batch_format="pyarrow"), LABELS)
    for rounds in range(1, MAX_ITER + 1):
        heard = sym.join(labels, "inner", partitions, on=("a",), right_on=("node",)) \
            .map_batches(lambda t: pa.table({"node": t["b"], "label": t["label"]}), batch_format="pyarrow")
        new = keep(f"labels-{rounds}", heard.union(labels).groupby("node").min("label")
                   .map_batches(_min_label, batch_format="pyarrow"), LABELS)
        changed = new.join(labels, "inner", partitions, on=("node",), left_suffix="_new", right_suffix="_old") \
            .filter(expr=col("label_new") != col("label_old")).count()
        labels = new
        if not changed:
            break
    else:
        log.warning("near dedup: labels still changed after %d rounds; some duplicates may name a document "
                    "that is itself a duplicate", MAX_ITER)
    dups = labels.filter(expr=col("node") != col("label"))
    named = dups.join(keys.select_columns(["pos", "doc_id"]), "inner", partitions, on=("label",), right_on=("pos",))
    return named.map_batches(lambda t: _decisions(t["node"].to_numpy(), "duplicate", t["doc_id"].combine_chunks(),
                                                  [f"near duplicate of {o}" for o in t["doc_id"].to_pylist()]),
                             batch_format="pyarrow")


def decide_partitioned(keys, cfg: DedupConfig, partitions: int, keep: Checkpoints) -> list:
    schema = key_schema(cfg)
    keys, rejects = _partitioned_split(keys, split_repeated_ids, "doc_id", partitions, keep, "ids", schema)
    decided = [rejects]
    if cfg.exact:
        keys, dups = _partitioned_split(keys, split_exact, "chash", partitions, keep, "exact", schema)
        decided.append(dups)
    if cfg.near.enabled:
        edges = per_key(keys.map_batches(band_rows, fn_kwargs={"near": cfg.near}, batch_format="pyarrow"),
                        "bkey", star_edges, partitions)
        edges = per_key(edges.map_batches(with_pair_key, batch_format="pyarrow"), "pair", unique_edges, partitions)
        if cfg.near.verify:
            edges = verify_partitioned(edges, keys, cfg.near, partitions)
        edges = keep("edges", edges, EDGES)
        if edges.count() <= cfg.max_rows_in_one_task:
            decided.append(ray.data.from_arrow_refs([_in_one_task(components_local, edges.to_arrow_refs())]))
        else:
            decided.append(components_partitioned(edges, keys, partitions, keep))
    return decided


@ray.remote(num_cpus=1)
def _run_in_one_task(fn, args, *blocks):
    return fn(*args, pa.concat_tables(blocks) if blocks else None)


def _in_one_task(fn, refs, *args) -> ray.ObjectRef:
    """fn(*args, the blocks as one table) in one Ray task; the driver only passes references. Waited for:
    started beside the chunkers' actor pool, the whole-CPU task could find no node with a CPU free."""
    ref = _run_in_one_task.remote(fn, args, *refs)
    ray.wait([ref], fetch_local=False)
    return ref


# ------------------------------------------------------------------ the stage's entry point
def apply_decisions(batch: pa.Table, decisions=None) -> pa.Table:
    """Turn decided documents into `duplicate` or `reject` rows; the others pass unchanged.
    `decisions` (a reference, for a small set) is joined here; a large set arrives already joined."""
    if decisions is not None:
        table = ray.get(decisions) if isinstance(decisions, ray.ObjectRef) else decisions
        batch = batch.join(table, "pos", join_type="left outer")
    decided = pc.is_valid(batch["d_kind"])
    out = batch
    for name, value in (("kind", batch["d_kind"]), ("reason", batch["d_reason"]),
                        ("duplicate_of", pc.if_else(pc.equal(batch["d_kind"], "duplicate"), batch["d_of"], None))):
        merged = pc.if_else(decided, value, batch[name])
        out = out.set_column(out.schema.get_field_index(name), name, merged.cast(batch.schema.field(name).type))
    return out.drop_columns(["d_kind", "d_of", "d_reason"])


def deduplicate(docs: ray.data.Dataset, cfg: DedupConfig,
                keep: Checkpoints = Checkpoints(None)) -> tuple[ray.data.Dataset, dict]:
    """`docs` (rows with `pos`) with every repeated id rejected and every duplicate marked; and what ran where.
    Each pass's output goes through `keep` (written to the stage folder, by the stage)."""
    keys = keep("keys", docs.map_batches(doc_keys, fn_kwargs={"cfg": cfg}, batch_size=KEYS_BATCH,
                                         batch_format="pyarrow"), key_schema(cfg))
    n = keys.count()
    partitions = cfg.partitions or max(int(ray.cluster_resources().get("CPU", 1)), -(-n // 100_000))
    if n <= cfg.max_rows_in_one_task:
        decisions = _in_one_task(decide_in_one_task, keys.to_arrow_refs(), cfg)
        return docs.map_batches(apply_decisions, fn_kwargs={"decisions": decisions}, **LIGHT), \
            {"documents": n, "partitions": 1}
    decided = decide_partitioned(keys, cfg, partitions, keep)
    table = keep("decisions", decided[0].union(*decided[1:]) if len(decided) > 1 else decided[0], DECISIONS)
    if table.count() <= cfg.max_rows_in_one_task:
        ref = _in_one_task(_or_empty, table.to_arrow_refs())
        joined = docs.map_batches(apply_decisions, fn_kwargs={"decisions": ref}, **LIGHT)
    else:
        joined = docs.join(table, "left_outer", partitions, on=("pos",)) \
            .map_batches(apply_decisions, **LIGHT)
    return joined, {"documents": n, "partitions": partitions}


def _or_empty(t: pa.Table | None) -> pa.Table:
    return t if t is not None else DECISIONS.empty_table()

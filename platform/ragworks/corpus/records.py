"""The one row schema every corpus operator reads and writes.

A row is a document, a chunk, a duplicate or a reject (`kind`); keeping one
schema means a single streaming pass can route every input record somewhere,
so nothing is dropped on the way.
"""

import pyarrow as pa

SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # doc -> chunk | duplicate | reject
        ("id", pa.string()),
        ("doc_id", pa.string()),
        ("chunk_index", pa.int32()),
        ("n_tokens", pa.int32()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("line", pa.int64()),  # 1-based line (JSONL), row (Parquet) or null (one file, one doc)
        ("reason", pa.string()),  # why a row was rejected
        ("duplicate_of", pa.string()),
        ("metadata", pa.string()),  # JSON of the record's other fields
        ("doc_hash", pa.string()),  # the normalised document's content hash: what a delta compares
        ("chunk_hash", pa.string()),  # a chunk's own text hash (chunk rows)
    ]
)

EMPTY_ROW = {name: None for name in SCHEMA.names}


def to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{**EMPTY_ROW, **r} for r in rows], schema=SCHEMA)


def set_column(batch: pa.Table, name: str, values) -> pa.Table:
    """`batch` with column `name` set to `values`: replaced where it has it, appended where not."""
    if name in batch.column_names:
        return batch.set_column(batch.schema.get_field_index(name), name, values)
    return batch.append_column(name, values)


def reject(row: dict, reason: str) -> dict:
    return {**row, "kind": "reject", "reason": reason}

"""BEIR-layout queries and judgements (queries.jsonl, qrels/SPLIT.tsv)."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def load_qrels(folder: str | Path, split: str) -> dict[str, dict[str, int]]:
    path = Path(folder) / "qrels" / f"{split}.tsv"
    qrels: dict[str, dict[str, int]] = {}
    with path.open(newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not row or (lineno == 1 and not row[-1].strip().lstrip("-").isdigit()):
                continue  # blank line or header
            if len(row) != 3:
                raise ValueError(f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score', got {row!r}")
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


def load_queries(folder: str | Path, ids: set[str] | None = None) -> dict[str, str]:
    path = Path(folder) / "queries.jsonl"
    queries = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                qid, text = str(obj["_id"]), obj["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: not a query record with '_id' and 'text': {err}") from None
            if ids is None or qid in ids:
                queries[qid] = text
    return queries

"""Exact and near-duplicate removal in one streaming pass.

Dedup is global: every document must be compared with all earlier ones. A
single Ray Data actor holds the hashes (and the MinHash LSH index), so the pass
streams instead of shuffling; the first copy seen is kept, and every later copy
becomes a `duplicate` row naming the one it duplicates.
"""

from __future__ import annotations

import hashlib
import re

import pyarrow as pa

from ..config import DedupConfig
from .records import reject, to_table

_WORD = re.compile(r"\w+")


def content_hash(title: str | None, text: str) -> str:
    return hashlib.sha1(f"{title or ''}\n{text}".encode()).hexdigest()


def shingles(text: str, n: int) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


class Deduplicate:
    """Ray Data callable class; run it with concurrency=1 so one actor sees every doc."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.seen: dict[str, str] = {}
        self.ids: set[str] = set()
        self.lsh = None
        if cfg.near.enabled:
            from datasketch import MinHashLSH

            self.lsh = MinHashLSH(threshold=cfg.near.threshold, num_perm=cfg.near.num_perm)

    def _minhash(self, text: str):
        from datasketch import MinHash

        m = MinHash(num_perm=self.cfg.near.num_perm)
        m.update_batch(list(shingles(text, self.cfg.near.shingle_words)))
        return m

    def check(self, doc_id: str, title: str | None, text: str) -> tuple[str, str] | None:
        """(kind, original id) when this doc duplicates an earlier one; else remember it."""
        if self.cfg.exact:
            h = content_hash(title, text)
            if h in self.seen:
                return "exact", self.seen[h]
            self.seen[h] = doc_id
        if self.lsh is not None:
            m = self._minhash(text)
            hits = self.lsh.query(m)
            if hits:
                return "near", min(hits)
            self.lsh.insert(doc_id, m)
        return None

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            if row["kind"] == "doc":
                if row["doc_id"] in self.ids:
                    row = reject(row, f"duplicate id '{row['doc_id']}' (an earlier record has the same id)")
                else:
                    self.ids.add(row["doc_id"])
                    found = self.check(row["doc_id"], row["title"], row["text"])
                    if found is not None:
                        kind, original = found
                        row = {**row, "kind": "duplicate", "duplicate_of": original,
                               "reason": f"{kind} duplicate of {original}"}
            out.append(row)
        return to_table(out)

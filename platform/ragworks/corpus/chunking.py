"""Token-aware chunking: windows of the embedder's own tokens, so a chunk never
exceeds what the model reads, with overlap so no sentence is only ever cut."""

from __future__ import annotations

import pyarrow as pa

from ..config import ChunkingConfig
from ..models import resolve_model
from .records import to_table


def token_windows(word_ids: list, n: int, budget: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) token windows of at most `budget` tokens that do not split a word
    when they can help it, each starting `overlap` tokens (rounded to a word start)
    before the previous one ended."""
    if n <= budget:
        return [(0, n)]
    windows, start = [], 0
    while True:
        end = min(start + budget, n)
        if end < n and word_ids[end] is not None:
            e = end
            while e > start and word_ids[e - 1] == word_ids[end]:
                e -= 1
            if e > start + budget // 2:
                end = e
        windows.append((start, end))
        if end >= n:
            return windows
        nxt = max(end - overlap, start + 1)
        while nxt > start + 1 and word_ids[nxt] is not None and word_ids[nxt - 1] == word_ids[nxt]:
            nxt -= 1
        start = nxt


class Chunk:
    """Ray Data callable class: loads the tokenizer once per actor, splits `doc` rows
    into `chunk` rows and passes duplicates and rejects through untouched."""

    def __init__(self, cfg: ChunkingConfig, tokenizer: str):
        from transformers import AutoTokenizer

        self.cfg = cfg
        self.tok = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
        self.tok.model_max_length = 1 << 30  # we count tokens of whole documents, never feed them to a model

    def n_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def split(self, title: str | None, text: str) -> list[tuple[str, int]]:
        prefix = f"{title}\n" if (self.cfg.title and title) else ""
        prefix_tokens = self.n_tokens(prefix) if prefix else 0
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        n = len(offsets)
        if self.cfg.max_tokens is None:
            return [(prefix + text, prefix_tokens + n)]
        budget = max(self.cfg.max_tokens - prefix_tokens, self.cfg.max_tokens // 2)
        overlap = min(self.cfg.overlap, budget - 1)
        out = []
        for start, end in token_windows(enc.word_ids(), n, budget, overlap):
            body = text[offsets[start][0] : offsets[end - 1][1]] if n else text
            out.append((prefix + body, prefix_tokens + (end - start)))
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            if row["kind"] != "doc":
                out.append(row)
                continue
            for i, (text, n_tokens) in enumerate(self.split(row["title"], row["text"])):
                out.append({**row, "kind": "chunk", "id": f"{row['doc_id']}#{i}", "chunk_index": i,
                            "text": text, "n_tokens": n_tokens})
        return to_table(out)

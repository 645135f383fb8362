"""Token-aware chunking: windows of the embedder's own tokens, so a chunk never
exceeds what the model reads, with overlap so no sentence is only ever cut."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

from ..models import resolve_model
from .config import ChunkingConfig
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


def chunk_id(doc_id: str, index: int) -> str:
    """A chunk's id names its document and its place in it, nothing else: another document's change never
    moves it, and a changed document's chunks are replaced whole (by `doc_id`), so a shorter new version
    leaves no orphan. Its content is `chunk_hash`."""
    return f"{doc_id}#{index}"


def fast_tokenizer(model: str):
    """A local model folder's `tokenizer.json` as a `tokenizers.Tokenizer`: the same tokenizer transformers'
    fast wrapper holds, without importing transformers and torch (seconds per chunker actor); None when the
    model is a hub id or has no tokenizer.json."""
    path = Path(model) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


class Chunk:
    """Ray Data callable class: loads the tokenizer once per actor, splits `doc` rows
    into `chunk` rows and passes duplicates and rejects through untouched."""

    def __init__(self, cfg: ChunkingConfig, tokenizer: str):
        self.cfg = cfg
        self.tok, self.backend = None, fast_tokenizer(resolve_model(tokenizer))
        if self.backend is None:
            from transformers import AutoTokenizer

            self.tok = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
            self.tok.model_max_length = 1 << 30  # we count tokens of whole documents, never feed them to a model
            if self.tok.is_fast:  # a copy: a tokenizer.json may carry padding and truncation
                from tokenizers import Tokenizer

                self.backend = Tokenizer.from_str(self.tok.backend_tokenizer.to_str())
        if self.backend is not None:
            self.backend.no_padding()
            self.backend.no_truncation()

    def split_batch(self, titles: list[str | None], texts: list[str]) -> list[list[tuple[str, int]]]:
        """One tokenizer call for a whole batch (a call per row costs more than the tokenizing). A fast
        tokenizer's own encodings are read directly: the Python lists of every token's ids and offsets that
        `tok(...)` builds cost as much as the tokenizing, and a document that fits needs only its length."""
        if not texts:
            return []
        prefixes = [f"{t}\n" if (self.cfg.title and t) else "" for t in titles]
        backend = self.backend
        if backend is not None:
            prefix_tokens = [len(e) for e in backend.encode_batch(prefixes, add_special_tokens=False)]
            encs = backend.encode_batch(texts, add_special_tokens=False)
            offsets, word_ids = (lambda i: encs[i].offsets), (lambda i: encs[i].word_ids)
            lengths = [len(e) for e in encs]
        else:
            prefix_tokens = [len(ids) for ids in self.tok(prefixes, add_special_tokens=False)["input_ids"]]
            enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True)
            offsets, word_ids = (lambda i: enc["offset_mapping"][i]), enc.word_ids
            lengths = [len(o) for o in enc["offset_mapping"]]
        return [self._windows(p, n_p, text, n, lambda i=i: offsets(i), lambda i=i: word_ids(i))
                for i, (p, n_p, text, n) in enumerate(zip(prefixes, prefix_tokens, texts, lengths))]

    def split(self, title: str | None, text: str) -> list[tuple[str, int]]:
        return self.split_batch([title], [text])[0]

    def _windows(self, prefix: str, prefix_tokens: int, text: str, n: int, offsets, word_ids) -> list[tuple[str, int]]:
        if self.cfg.max_tokens is None:
            return [(prefix + text, prefix_tokens + n)]
        budget = max(self.cfg.max_tokens - prefix_tokens, self.cfg.max_tokens // 2)
        at = offsets()
        if n <= budget:  # the span the tokens cover, as for a longer document's windows
            return [(prefix + (text[at[0][0]: at[-1][1]] if n else text), prefix_tokens + n)]
        overlap = min(self.cfg.overlap, budget - 1)
        return [(prefix + text[at[start][0]: at[end - 1][1]], prefix_tokens + (end - start))
                for start, end in token_windows(word_ids(), n, budget, overlap)]

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        rows = batch.to_pylist()
        docs = [r for r in rows if r["kind"] == "doc"]
        pieces = iter(self.split_batch([r["title"] for r in docs], [r["text"] for r in docs]))
        for row in rows:
            if row["kind"] != "doc":
                out.append(row)
                continue
            for i, (text, n_tokens) in enumerate(next(pieces)):
                out.append({**row, "kind": "chunk", "id": chunk_id(row["doc_id"], i), "chunk_index": i,
                            "text": text, "n_tokens": n_tokens,
                            "chunk_hash": hashlib.sha1(text.encode()).hexdigest()[:16]})
        return to_table(out)

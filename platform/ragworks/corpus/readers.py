"""Readers that turn every input record into exactly one row, readable or not.

Ray's own JSON reader fails the whole read on one bad line and forgets line
numbers; these stream each file (a block at a time) and turn what cannot be
read into a reject that names the file and line.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.datasource import FileBasedDatasource

from .config import SourceConfig
from .records import reject, to_table

BLOCK_ROWS = 1024
MAX_RAW_CHARS = 2000


def _as_text(value) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def record_to_row(obj, cfg: SourceConfig, source: str, line: int | None) -> dict:
    """A parsed record (dict) to a `doc` row, or a reject saying which field is wrong."""
    base = {"kind": "doc", "source": source, "line": line}
    if not isinstance(obj, dict):
        return reject({**base, "text": _as_text(obj)}, f"record is a {type(obj).__name__}, not an object")
    doc_id = obj.get(cfg.id_field)
    if doc_id is None or doc_id == "":
        if cfg.format == "beir":
            return reject({**base, "text": json.dumps(obj)[:MAX_RAW_CHARS]}, f"missing field '{cfg.id_field}'")
        doc_id = f"{Path(source).name}:{line}"
    text = obj.get(cfg.text_field)
    title = obj.get(cfg.title_field) if cfg.title_field else None
    rest = {k: v for k, v in obj.items() if k not in (cfg.id_field, cfg.text_field, cfg.title_field)}
    row = {**base, "doc_id": str(doc_id), "id": str(doc_id), "title": _as_text(title) or None,
           "metadata": json.dumps(rest, default=str) if rest else None}
    if text is None:
        return reject(row, f"missing field '{cfg.text_field}'")
    if not isinstance(text, str):
        return reject({**row, "text": _as_text(text)}, f"field '{cfg.text_field}' is a {type(text).__name__}, not a string")
    return {**row, "text": text}


class RecordDatasource(FileBasedDatasource):
    """JSONL, Parquet or whole files; one output row per input record."""

    def __init__(self, paths: list[str], cfg: SourceConfig, **kwargs):
        super().__init__(paths, **kwargs)
        self.cfg = cfg

    def _open_input_source(self, filesystem, path: str, **open_args) -> pa.NativeFile:
        if self.cfg.format == "parquet":  # Parquet needs random access, not a stream
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        reader = {"parquet": self._parquet, "files": self._file}.get(self.cfg.format, self._jsonl)
        rows: list[dict] = []
        # `limit` keeps the first N records by (file, line): no file can add more than N of them
        for row in itertools.islice(reader(f, path), self.cfg.limit):
            rows.append(row)
            if len(rows) >= BLOCK_ROWS:
                yield to_table(rows)
                rows = []
        if rows:
            yield to_table(rows)

    def _jsonl(self, f, path: str) -> Iterator[dict]:
        for lineno, raw in enumerate(_lines(f), start=1):
            if not raw.strip():
                continue  # blank lines are layout, not records
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield reject({"kind": "doc", "source": path, "line": lineno,
                              "text": raw.decode("utf-8", "replace")[:MAX_RAW_CHARS]},
                             f"undecodable bytes (not UTF-8): {err.reason} at byte {err.start}")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                yield reject({"kind": "doc", "source": path, "line": lineno, "text": line[:MAX_RAW_CHARS]},
                             f"invalid JSON: {err.msg} (column {err.colno})")
                continue
            yield record_to_row(obj, self.cfg, path, lineno)

    def _parquet(self, f, path: str) -> Iterator[dict]:
        row_number = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=BLOCK_ROWS):
            for obj in batch.to_pylist():
                row_number += 1
                yield record_to_row(obj, self.cfg, path, row_number)

    def _file(self, f, path: str) -> Iterator[dict]:
        raw = f.readall()
        name = Path(path).name
        row = {"kind": "doc", "source": path, "doc_id": name, "id": name, "title": Path(path).stem,
               "metadata": json.dumps({"path": path, "extension": Path(path).suffix.lower()})}
        try:
            yield {**row, "text": raw.decode("utf-8")}
        except UnicodeDecodeError as err:
            yield reject({**row, "text": raw.decode("utf-8", "replace")[:MAX_RAW_CHARS]},
                         f"undecodable bytes (not UTF-8): {err.reason} at byte {err.start}")


def _lines(f) -> Iterator[bytes]:
    buf = b""
    while chunk := f.read(1 << 20):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from lines
    if buf:
        yield buf


def source_files(cfg: SourceConfig) -> list[str]:
    """The files a source reads, in a stable order; a folder is searched recursively."""
    root = Path(cfg.path)
    if cfg.format == "beir":
        return [str(root / "corpus.jsonl" if root.is_dir() else root)]
    if root.is_file():
        return [str(root)]
    suffixes = {"jsonl": [".jsonl", ".json"], "parquet": [".parquet"], "files": cfg.extensions}[cfg.format]
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise FileNotFoundError(f"corpus.source.path: no {'/'.join(suffixes)} files under {root}")
    return files


def read_source(cfg: SourceConfig, files: list[str] | None = None) -> ray.data.Dataset:
    """Every record of every file (or of `files`, a re-run's changed ones), at most `limit` of each; the stage
    keeps the first `limit` by (file, line)."""
    return ray.data.read_datasource(RecordDatasource(source_files(cfg) if files is None else files, cfg))

"""Stage manifests: what a stage was run with and what it produced.

A stage's key hashes its own config and the keys of the stages it read, so a
change anywhere upstream invalidates everything downstream and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .storage import Folder, cache_dir

MANIFEST = "manifest.json"
PROGRESS = "_in_progress.json"  # a stage that started and has not finished: its key, so a re-run can resume it


def stable_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def portable(obj: Any, root: str | Path) -> Any:
    """Paths under `root` made relative, so a stage's key stays the same when the project runs from
    another folder: `ragworks submit` runs it from the cluster's copy of the project."""
    prefix = str(root).rstrip("/") + "/"
    if isinstance(obj, str):
        return obj[len(prefix):] if obj.startswith(prefix) else obj
    if isinstance(obj, dict):
        return {k: portable(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, root) for v in obj]
    return obj


def files_fingerprint(path: str | Path) -> str:
    """Names and contents of every file under `path`. Not file times: a copy of the same data (a new
    machine, a restored backup, the package `ragworks submit` unpacks) must not re-run a finished job."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return stable_hash([(str(p.relative_to(path.parent)), content_hash(p)) for p in files])


def content_hash(path: Path) -> str:
    """A file's BLAKE2 digest, cached by path, size and mtime: an unchanged corpus is read once per machine."""
    st = path.stat()
    entry = cache_dir() / "file_hashes" / stable_hash([str(path.resolve()), st.st_size, st.st_mtime_ns])
    if entry.exists():
        return entry.read_text()
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=entry.parent)  # written whole, then renamed: a reader never sees half
    with os.fdopen(fd, "w") as f:
        f.write(digest.hexdigest())
    os.replace(tmp, entry)
    return digest.hexdigest()


def read_manifest(stage_dir: str | Path | Folder) -> dict | None:
    try:
        return json.loads((Folder(stage_dir) / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_manifest(stage_dir: str | Path | Folder, manifest: dict) -> None:
    """Written last and atomically: a manifest in the workdir means the stage finished."""
    (Folder(stage_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

"""Where a job's artifacts live: a local folder, a shared mount, or an object store (s3://, gs://).

Ray Data, LanceDB and Ray Train read and write URIs themselves, so a stage hands them
`str(folder)` and its output goes straight to the store from whichever node runs the work.
This module covers the rest: what ragworks writes on its own (manifests, resume markers,
reports) through pyarrow filesystems, and model folders, which transformers and
sentence-transformers only load from local disk: they are written to a local folder and
uploaded (`staged`), and fetched once per node into the cache (`fetch`).

Credentials and endpoints come from the usual environment (AWS_*, GOOGLE_*, instance
roles); an S3-compatible store such as MinIO needs AWS_ENDPOINT_URL (and AWS_ALLOW_HTTP=true
for http), set on every node.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs

SCHEMES = ("s3://", "gs://", "gcs://")


def is_uri(value: str | os.PathLike) -> bool:
    return str(value).startswith(SCHEMES)


class Folder:
    """A folder on any pyarrow filesystem. `str(folder)` is the absolute path or the URI: what Ray Data,
    LanceDB and Ray Train take."""

    def __init__(self, location: str | os.PathLike | Folder):
        if isinstance(location, Folder):  # already resolved: no second filesystem lookup
            self.uri, self.fs, self.path = location.uri, location.fs, location.path
            return
        location = str(location)
        if is_uri(location):
            self.uri = location.rstrip("/")
            self.fs, self.path = pafs.FileSystem.from_uri(self.uri)
        else:
            self.path = self.uri = str(Path(location.removeprefix("file://")).expanduser().resolve())
            self.fs = pafs.LocalFileSystem()

    # -- naming
    def __truediv__(self, name: str) -> Folder:
        """The same filesystem, one level down: resolving an s3:// URI asks the store for the bucket's
        region, which a path join must not repeat."""
        child = Folder(self)
        child.uri, child.path = f"{self.uri}/{name}", f"{self.path}/{name}"
        return child

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        """Only local folders are paths; passing a URI where a local path is needed is a bug worth naming."""
        if not self.is_local:
            raise TypeError(f"{self.uri} is in an object store, not a local path")
        return self.path

    def __repr__(self) -> str:
        return f"Folder({self.uri!r})"

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    # -- queries
    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def files(self, suffix: str = "") -> list[Folder]:
        """Every file below, sorted; none when the folder does not exist."""
        if self.fs.get_file_info(self.path).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        names = sorted(i.path[len(self.path.rstrip("/")) + 1:] for i in infos
                       if i.type == pafs.FileType.File and i.path.endswith(suffix))
        return [self / n for n in names]

    def read_text(self) -> str:
        with self.fs.open_input_stream(self.path) as f:
            return f.read().decode()

    # -- changes
    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_bytes(self, data: bytes) -> None:
        """Atomic: a local file is written beside and renamed; an object-store put is atomic already."""
        if self.is_local:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path + ".tmp"
            Path(tmp).write_bytes(data)
            os.replace(tmp, self.path)
        else:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path)

    def remove(self) -> None:
        """The folder and everything under it; nothing when it is absent."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_dir(self.path)

    def move_to(self, target: Folder) -> None:
        """A rename on disk; object stores have no folder rename, so there it is a copy and a delete."""
        if self.is_local and target.is_local:
            Path(target.path).parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.path, target.path)
            return
        is_file = self.fs.get_file_info(self.path).type == pafs.FileType.File
        pafs.copy_files(self.path, target.path, source_filesystem=self.fs, destination_filesystem=target.fs)
        self.unlink() if is_file else self.remove()


@contextlib.contextmanager
def staged(target: Folder) -> Iterator[Path]:
    """A local folder whose files end up in `target`: `target` itself on disk, else a temporary folder
    uploaded when the block ends. For writers that only know local paths (model exports, reports)."""
    if target.is_local:
        Path(target.path).mkdir(parents=True, exist_ok=True)
        yield Path(target.path)
        return
    with tempfile.TemporaryDirectory(prefix="ragworks-stage-") as tmp:
        yield Path(tmp)
        pafs.copy_files(tmp, target.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=target.fs)


@contextlib.contextmanager
def filled_atomically(target: Path) -> Iterator[Path]:
    """A temporary folder beside `target`, renamed to it when the block ends: processes filling one cache
    entry at once (actors starting together on a node) never see half of it, and the first rename wins."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, target)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)


def cache_dir() -> Path:
    """This machine's ragworks cache: converted models, fetched models, file hashes."""
    return Path(os.environ.get("RAGWORKS_CACHE", "~/.cache/ragworks")).expanduser()


def fetch(location: str) -> str:
    """A local path for `location`: itself when local, else a copy in this node's cache, downloaded once.

    The copy is keyed by the URI and the listing's sizes and mtimes, so a re-exported model is fetched
    again.
    """
    if not is_uri(location):
        return location
    folder = Folder(location)
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    if not infos:
        raise FileNotFoundError(f"{location}: nothing there to fetch")
    stamp = hashlib.sha256(repr(sorted((i.path, i.size, i.mtime_ns) for i in infos)).encode()).hexdigest()[:16]
    target = cache_dir() / "fetched" / f"{folder.name}-{stamp}"
    if not target.exists():
        with filled_atomically(target) as tmp:
            pafs.copy_files(folder.path, str(tmp), source_filesystem=folder.fs,
                            destination_filesystem=pafs.LocalFileSystem())
    return str(target)

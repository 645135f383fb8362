"""Text clean-up before hashing and chunking, so equal texts hash equal."""

from __future__ import annotations

import hashlib
import re
import unicodedata
import warnings

import pyarrow as pa

from .config import NormalizeConfig
from .records import reject, to_table

_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")
_HTML_SUFFIXES = (".html", ".htm")


def html_to_text(html: str) -> str:
    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    return soup.get_text("\n")


def normalize_text(text: str, cfg: NormalizeConfig, is_html: bool = False) -> str:
    if is_html:
        text = html_to_text(text)
    if cfg.unicode != "none":
        text = unicodedata.normalize(cfg.unicode, text)
    if cfg.whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
        text = _BLANK_LINES.sub("\n\n", text).strip()
    return text


def document_hash(title: str | None, text: str) -> str:
    """The identity of a document's content, after normalisation: what exact dedup compares and what a
    re-run compares with the last one's to tell a changed document from an unchanged one."""
    return hashlib.sha1(f"{title or ''}\n{text}".encode()).hexdigest()


def normalize_batch(batch: pa.Table, cfg: NormalizeConfig) -> pa.Table:
    """Ray Data batch function: normalise docs and hash them; an empty result becomes a reject."""
    out = []
    for row in batch.to_pylist():
        if row["kind"] == "doc":
            source = (row["source"] or "").lower()
            is_html = cfg.html == "always" or (cfg.html == "auto" and source.endswith(_HTML_SUFFIXES))
            row["text"] = normalize_text(row["text"], cfg, is_html)
            if row["title"]:
                row["title"] = normalize_text(row["title"], cfg)
            if not row["text"]:
                row = reject(row, "empty text after normalisation")
            else:
                row["doc_hash"] = document_hash(row["title"], row["text"])
        out.append(row)
    return to_table(out)

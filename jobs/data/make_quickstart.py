#!/usr/bin/env python3
"""Build the "quickstart" sample retrieval dataset (BEIR layout).

The corpus is made of the module docstrings of well-known Python standard
library modules, so it can be regenerated offline on any Python install
without downloading anything. Queries and relevance judgements are
hand-written and point at modules whose docstrings answer them.

Usage (from any working directory):

    python jobs/data/make_quickstart.py

Writes, next to this script:

    quickstart/corpus.jsonl    {"_id", "title", "text"} per line
    quickstart/queries.jsonl   {"_id", "text"} per line
    quickstart/qrels/test.tsv  query-id <TAB> corpus-id <TAB> score

Standard library only. The docstrings were checked against Python 3.11.7;
other Python versions may give slightly different texts or module sets.
"""

from __future__ import annotations

import importlib
import json
import pydoc
import sys
import warnings
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "quickstart"

MIN_CHARS = 200
MAX_CHARS = 3000

# Candidate modules. Those that fail to import, or whose cleaned docstring
# is shorter than MIN_CHARS, are skipped. Modules deprecated by PEP 594
# (removed in Python 3.13) are deliberately not listed.
CANDIDATES = [
    "argparse", "array", "ast", "asyncio", "base64", "bisect", "bz2",
    "calendar", "cmd", "codecs", "collections", "colorsys", "configparser",
    "contextlib", "copy", "cProfile", "csv", "dataclasses", "datetime",
    "dbm", "decimal", "difflib", "dis", "doctest", "email", "enum",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext",
    "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client",
    "http.cookies", "http.server", "imaplib", "inspect", "itertools", "json",
    "locale", "logging", "lzma", "mimetypes", "mmap", "netrc", "operator",
    "optparse", "pathlib", "pdb", "pickle", "plistlib", "poplib", "pprint",
    "queue", "quopri", "random", "re", "sched", "secrets", "selectors",
    "shelve", "shutil", "signal", "smtplib", "socket", "socketserver",
    "sqlite3", "ssl", "statistics", "string", "struct", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "tomllib", "trace", "traceback", "typing", "unicodedata", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref",
    "xml.etree.ElementTree", "xmlrpc.client", "zipfile", "zlib",
]

# Hand-written queries: (query id, text, relevant module names).
QUERIES = [
    ("q1", "how do I parse optional and positional command-line arguments "
           "and dispatch to sub-parsers", ["argparse"]),
    ("q2", "priority queue built on a list where the smallest item is "
           "always at index 0", ["heapq"]),
    ("q3", "compute the differences between two lists of lines in unified "
           "diff format", ["difflib"]),
    ("q4", "library for compressing and decompressing data", ["lzma", "zlib"]),
    ("q5", "persistent dictionary-like object that stores arbitrary pickled "
           "Python objects on disk", ["shelve"]),
    ("q6", "what is the difference between a shallow copy and a deep copy "
           "of compound objects", ["copy"]),
    ("q7", "calculate the mean, median, variance and standard deviation of "
           "data", ["statistics"]),
    ("q8", "read and write comma separated value files with a custom "
           "delimiter and quoting", ["csv"]),
    ("q9", "create temporary files and directories safely without race "
           "conditions", ["tempfile"]),
    ("q10", "measure the execution time of small code snippets",
            ["timeit"]),
    ("q11", "generate a random universally unique identifier", ["uuid"]),
    ("q12", "read a configuration file with [section] headers and "
            "name: value entries", ["configparser"]),
    ("q13", "convert between Python values and C structs using a format "
            "string with byte order and alignment", ["struct"]),
    ("q14", "convert RGB colors to hue, saturation and value (HSV)",
            ["colorsys"]),
    ("q15", "connect to a SQL database in a file or in memory and execute "
            "queries with a cursor", ["sqlite3"]),
    ("q16", "write test cases as classes with assertEqual and run them with "
            "a text test runner", ["unittest"]),
    # Paraphrases in a user's words, sharing few terms with the docstrings: where
    # full-text search and dense search part ways (q1-q16 borrow the docs' words).
    ("q17", "keep my jobs ordered so the cheapest one can always be popped first", ["heapq"]),
    ("q18", "turn an object into bytes I can save and load again later", ["pickle"]),
    ("q19", "show what changed between two versions of a text", ["difflib"]),
    ("q20", "make a big log file take less space", ["lzma", "zlib"]),
    ("q21", "does this file name match a wildcard like *.txt", ["fnmatch"]),
    ("q22", "start another program from my script and capture what it prints", ["subprocess"]),
    ("q23", "send an email from a script", ["smtplib"]),
    ("q24", "upload files to a remote server over FTP", ["ftplib"]),
    ("q25", "look up the official name and category of a character", ["unicodedata"]),
    ("q26", "translate my program's messages into other languages", ["gettext"]),
    ("q27", "format numbers the way people in another country expect", ["locale"]),
    ("q28", "pause my program at a line and step through it to find a bug", ["pdb"]),
    ("q29", "make an unguessable token for a password reset link", ["secrets"]),
    ("q30", "draw samples from a normal distribution", ["random"]),
    ("q31", "check the sha256 fingerprint of a downloaded file", ["hashlib"]),
    ("q32", "read the frames and sample rate of an audio recording", ["wave"]),
    ("q33", "encrypt a network connection with certificates", ["ssl"]),
    ("q34", "split a web address into its scheme, host, path and query", ["urllib.parse"]),
    ("q35", "download a web page", ["urllib.request", "http.client"]),
    ("q36", "a simple key-value database kept in a file", ["dbm", "shelve"]),
    ("q37", "serve the files of a folder to a browser", ["http.server"]),
    ("q38", "walk the syntax tree of Python source code", ["ast"]),
    ("q39", "break Python source into its lexical pieces", ["tokenize"]),
    ("q40", "call a procedure on a remote machine with XML messages over the web", ["xmlrpc.client"]),
    ("q41", "run a function later at a given time", ["sched"]),
    ("q42", "print a month as a grid of days", ["calendar"]),
    ("q43", "show nested lists and dicts in a readable layout", ["pprint"]),
    ("q44", "which lines of my code ran, and how often", ["trace"]),
    ("q45", "annotate the types of arguments and of generic containers", ["typing"]),
    ("q46", "get a function's signature and source code while the program runs", ["inspect"]),
    ("q47", "a TCP server that handles each client in its own thread", ["socketserver"]),
    ("q48", "parse and build hierarchical markup documents", ["xml.etree.ElementTree"]),
    ("q49", "store many numbers compactly with one type code", ["array"]),
    ("q50", "the plus and less-than operators as functions, to sort by a field", ["operator"]),
    ("q51", "guess a file's content type from its extension", ["mimetypes"]),
    ("q52", "count how many times each item occurs", ["collections"]),
    ("q53", "chain iterators together and enumerate every combination", ["itertools"]),
    ("q54", "read settings files written by macOS applications", ["plistlib"]),
    ("q55", "set a cookie in an HTTP response header", ["http.cookies"]),
    ("q56", "an interactive prompt with my own commands", ["cmd"]),
    ("q57", "check that the examples in my docstrings still print what they show", ["doctest"]),
]


def clean(text: str) -> str:
    """Collapse all whitespace runs to single spaces."""
    return " ".join(text.split())


def truncate(text: str, limit: int = MAX_CHARS) -> str:
    """Cut text to at most `limit` characters, at a whitespace boundary."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    if cut <= 0:
        cut = limit
    return text[:cut].rstrip()


def module_doc(name: str) -> str | None:
    """Return the cleaned docstring of a module, or None if unavailable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
    except Exception:  # ImportError, platform-specific failures, ...
        return None
    doc = module.__doc__
    if not doc:
        try:
            doc = pydoc.getdoc(module)
        except Exception:
            doc = None
    return clean(doc) if doc else None


def build_corpus() -> list[dict]:
    docs = []
    for name in sorted(set(CANDIDATES)):
        text = module_doc(name)
        if text is None or len(text) < MIN_CHARS:
            continue
        docs.append({"_id": name, "title": f"{name} module",
                     "text": truncate(text)})
    return docs


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> int:
    corpus = build_corpus()
    doc_ids = {d["_id"] for d in corpus}

    missing = sorted({m for _, _, rel in QUERIES for m in rel} - doc_ids)
    if missing:
        print(f"error: target modules missing from corpus: {missing}",
              file=sys.stderr)
        return 1

    (OUT_DIR / "qrels").mkdir(parents=True, exist_ok=True)
    write_jsonl(OUT_DIR / "corpus.jsonl", corpus)
    write_jsonl(OUT_DIR / "queries.jsonl",
                [{"_id": qid, "text": text} for qid, text, _ in QUERIES])
    with (OUT_DIR / "qrels" / "test.tsv").open(
            "w", encoding="utf-8", newline="\n") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, _, rel in QUERIES:
            for doc_id in sorted(rel):
                fh.write(f"{qid}\t{doc_id}\t1\n")

    n_qrels = sum(len(rel) for _, _, rel in QUERIES)
    print(f"wrote {len(corpus)} docs, {len(QUERIES)} queries, "
          f"{n_qrels} qrels to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Turn raw generations into queries / question-answer pairs, or say why not."""

from __future__ import annotations

import re

_PREFIX = re.compile(r"^\s*(?:\d+[.)]\s*|[-*•]\s*|(?:query|question|claim|search query)\s*[:：]\s*)+", re.I)
_QUOTES = "\"'“”‘’`"


def clean_query(text: str) -> str:
    """First non-empty line, without 'Query:'-style prefixes, numbering or wrapping quotes."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line).strip().strip(_QUOTES).strip()
    return re.sub(r"\s+", " ", line)


def parse_qa(text: str) -> tuple[str, str] | None:
    """'<question>\\nAnswer: <answer>' (the prompt ends with 'Question:')."""
    m = re.search(r"^(.*?)\n+\s*Answer\s*:\s*(.+)", text.strip(), re.S | re.I)
    if not m:
        return None
    # The answer's first line: small models go on with another passage or repeat themselves.
    question, answer = clean_query(m.group(1)), " ".join(m.group(2).strip().splitlines()[0].split())
    return (question, answer) if question and answer else None

"""The one RAG answer format: how context is shown, how answers cite, how they are scored.

Synthesis writes reference answers in it, the generator trains on it, evaluation
scores it and Serve prompts with it: a model tuned on one layout and served
with another would forget what it learned, so they all come from here.

Stored answers cite chunk ids (`[4983#0]`); the model sees the context numbered
and cites `[2]`: a 135M model copies a short number far more reliably than a
seven-digit id, and the number maps back to the id of the chunk shown there.
"""

from __future__ import annotations

import re
import string
from collections import Counter

ABSTAIN = "The context does not contain the answer."
SYSTEM = ("Answer the question using only the numbered context passages. Cite the passage you use by its number "
          f"in square brackets, like [2]. If the context does not contain the answer, say: {ABSTAIN}")
_ABSTAIN_MARKS = ("does not contain the answer", "do not know", "don't know", "cannot answer", "not mentioned")
_CITE = re.compile(r"\[([^\[\]\n]{1,80})\]")


def cut_words(text: str, n: int) -> str:
    words = text.split()
    return " ".join(words[:n]) + (" ..." if len(words) > n else "")


def context_block(context: list[dict], max_words: int = 120) -> str:
    return "\n".join(f"[{i}] {cut_words(c['text'], max_words)}" for i, c in enumerate(context, start=1))


def numbered(answer: str, context: list[dict]) -> str:
    """A stored answer as the model writes it: each cited chunk id becomes its number in the context."""
    number = {c["id"]: str(i) for i, c in enumerate(context, start=1)}
    return _CITE.sub(lambda m: f"[{number.get(m.group(1).strip(), m.group(1))}]", answer)


def messages(question: str, context: list[dict], history: list[dict] = (), max_words: int = 120) -> list[dict]:
    """Chat messages: the instruction, earlier turns, then the context and the question."""
    return [{"role": "system", "content": SYSTEM}, *history,
            {"role": "user", "content": f"Context:\n{context_block(context, max_words)}\n\nQuestion: {question}"}]


def cited_ids(text: str, context_ids: list[str]) -> list[str]:
    """Chunk ids the answer cites, in order of first mention: `[2]` is the second context chunk's id, a
    chunk id cited as itself counts too, and `[1, 3]` cites both."""
    known = set(context_ids)
    found: dict[str, None] = {}
    for group in _CITE.findall(text):
        for part in (p.strip() for p in group.split(",")):
            if part.isdigit() and 1 <= int(part) <= len(context_ids):
                found.setdefault(context_ids[int(part) - 1], None)
            elif part in known:
                found.setdefault(part, None)
    return list(found)


def abstains(text: str) -> bool:
    low = text.lower()
    return any(mark in low for mark in _ABSTAIN_MARKS)


def _tokens(text: str) -> list[str]:
    text = _CITE.sub(" ", text.lower())
    text = text.translate(str.maketrans(string.punctuation, " " * len(string.punctuation)))
    return [t for t in text.split() if t not in {"a", "an", "the"}]


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's answer F1 over words, citations and articles left out."""
    pred, ref = _tokens(prediction), _tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return float(not pred and not ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_answers(rows: list[dict]) -> dict[str, float]:
    """rows: {answer (generated), reference, oracle_id or None, context_ids}.

    citation accuracy: with the oracle in context, the answer cites it;
    abstention: without it, the answer says the context lacks the answer;
    answer F1: with the oracle, words shared with the reference answer.
    """
    with_oracle = [r for r in rows if r["oracle_id"]]
    without = [r for r in rows if not r["oracle_id"]]

    def mean(values):
        values = list(values)
        return round(sum(values) / len(values), 4) if values else 0.0

    return {
        "citation_accuracy": mean(r["oracle_id"] in cited_ids(r["answer"], r["context_ids"]) for r in with_oracle),
        "cites_context": mean(bool(cited_ids(r["answer"], r["context_ids"])) for r in with_oracle),
        "abstention": mean(abstains(r["answer"]) for r in without),
        "false_abstention": mean(abstains(r["answer"]) for r in with_oracle),
        "answer_f1": mean(token_f1(r["answer"], r["reference"]) for r in with_oracle),
        "examples": len(rows),
    }

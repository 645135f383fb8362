"""Few-shot prompts: "Document: ... Query: ..." (InPars / Promptagator).

A small instruct model given a bare instruction mostly copies the passage; a
few examples in the task's own style make it write queries like the task's.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config import PromptConfig

GENERIC_INSTRUCTION = "Write a short search query that the document answers."
GENERIC_EXAMPLES = [
    {"document": "The mitochondrion produces most of the cell's ATP through oxidative phosphorylation, "
                 "using oxygen and the products of the citric acid cycle.",
     "query": "how do mitochondria produce energy"},
    {"document": "A meta-analysis of 50 randomised trials found that regular aerobic exercise lowers "
                 "systolic blood pressure by about 5 mmHg in adults with hypertension.",
     "query": "does exercise reduce blood pressure in hypertension"},
    {"document": "The Great Wall of China was built and rebuilt over many centuries to protect Chinese "
                 "states against raids and invasions from the northern steppe.",
     "query": "why was the great wall of china built"},
]


def cut_words(text: str, n: int) -> str:
    words = text.split()
    return " ".join(words[:n]) + (" ..." if len(words) > n else "")


class QueryPrompt:
    """Builds the prompt for one chunk; the examples are read once."""

    def __init__(self, cfg: PromptConfig):
        self.cfg = cfg
        instruction, examples = GENERIC_INSTRUCTION, GENERIC_EXAMPLES
        if cfg.examples:
            data = yaml.safe_load(Path(cfg.examples).read_text()) or {}
            bad = [i for i, e in enumerate(data.get("examples", [])) if not {"document", "query"} <= set(e)]
            if not data.get("examples") or bad:
                raise ValueError(f"{cfg.examples}: needs 'examples: [{{document, query}}, ...]' (bad entries: {bad})")
            instruction, examples = data.get("instruction", instruction), data["examples"]
        self.instruction = cfg.instruction or instruction
        self.examples = examples[: cfg.max_examples]
        shots = [f"Document: {self.show(e.get('title'), e['document'])}\nQuery: {e['query']}" for e in self.examples]
        self.head = "\n\n".join([self.instruction, *shots])

    def show(self, title: str | None, text: str) -> str:
        """The part of a document the prompt shows (`prompt.document`)."""
        mode = self.cfg.document if title else "text"
        if mode == "title":
            return title
        if mode == "title_text":
            return f"{title}. {cut_words(text, self.cfg.max_doc_words)}"
        return cut_words(text, self.cfg.max_doc_words)

    def __call__(self, text: str, title: str | None = None) -> str:
        return f"{self.head}\n\nDocument: {self.show(title, text)}\nQuery:"


RAG_INSTRUCTION = ("Read the passage and write one question that it answers, then the answer in one or two "
                   "sentences using only the passage.")


def rag_prompt(text: str, max_words: int) -> str:
    return (f"{RAG_INSTRUCTION}\n\nPassage: {cut_words(text, max_words)}\n\nQuestion:")

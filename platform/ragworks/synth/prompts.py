"""Few-shot prompts: "Document: ... Query: ..." (InPars / Promptagator).

A small instruct model given a bare instruction mostly copies the passage; a
few examples in the task's own style make it write queries like the task's.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..answers import cut_words
from .config import PromptConfig

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


RAG_INSTRUCTION = ("Read the passage and write one question that it answers, then the answer in one sentence "
                   "using only the passage.")
# A 135M instruct model given only the instruction loops on "What is the answer to the question ...";
# with three worked examples it writes a grounded question and a short answer.
RAG_EXAMPLES = [
    {"passage": GENERIC_EXAMPLES[0]["document"], "question": "Where does most of the cell's ATP come from?",
     "answer": "The mitochondrion produces most of it through oxidative phosphorylation."},
    {"passage": GENERIC_EXAMPLES[1]["document"], "question": "How much does aerobic exercise lower blood pressure?",
     "answer": "Regular aerobic exercise lowers systolic blood pressure by about 5 mmHg in adults with hypertension."},
    {"passage": GENERIC_EXAMPLES[2]["document"], "question": "Why was the Great Wall of China built?",
     "answer": "To protect Chinese states against raids and invasions from the northern steppe."},
]
_RAG_HEAD = "\n\n".join([RAG_INSTRUCTION] + [f"Passage: {e['passage']}\nQuestion: {e['question']}\nAnswer: {e['answer']}"
                                            for e in RAG_EXAMPLES])


def rag_prompt(text: str, max_words: int) -> str:
    return f"{_RAG_HEAD}\n\nPassage: {cut_words(text, max_words)}\nQuestion:"

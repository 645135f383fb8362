"""The names a client uses for the served models: stable, readable, and never the server's paths.

OpenAI's `/v1/models` ids are what a client passes back as `model`; a path of the model cache there leaks the
server's layout and is not a name anyone can type. A request naming no served model answers 404
`model_not_found`, as OpenAI's API does, instead of silently answering with another model.
"""

from __future__ import annotations

import re

# folder names that say nothing of the model (a trained stage's `model/`, a converted GGUF's `converted/`)
GENERIC = {"model", "models", "merged", "final", "converted", "snapshots"}


def model_id(ref: str) -> str:
    """'bundled:SmolLM2-135M-Instruct', 'HuggingFaceTB/SmolLM2-135M-Instruct' and '.../converted/SmolLM2-135M-
    Instruct' are all 'SmolLM2-135M-Instruct'; a trained stage's '.../train_retriever/model' is 'train_retriever'."""
    parts = [p for p in re.split(r"[/\\]", ref.removeprefix("bundled:")) if p]
    while len(parts) > 1 and parts[-1] in GENERIC:
        parts.pop()
    return parts[-1] if parts else ref


class ServedModels:
    """The chat and embeddings models of one app, by id, with the configured names also accepted."""

    def __init__(self, chat: str, embeddings: str):
        self.refs = {"chat": chat, "embeddings": embeddings}
        self.ids = {purpose: model_id(ref) for purpose, ref in self.refs.items()}

    def check(self, purpose: str, asked: str | None) -> str | None:
        """None when `asked` is unset or names this purpose's model, else the 404 message."""
        if asked is None or asked in (self.ids[purpose], self.refs[purpose]):
            return None
        others = ", ".join(f"{i!r} ({p})" for p, i in self.ids.items())
        return (f"The model {asked!r} does not exist on this server; it serves {others} (GET /v1/models), and "
                f"{self.ids[purpose]!r} answers {purpose}")

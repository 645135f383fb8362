"""Request bodies: FastAPI answers 422 with the failing field's path for anything else."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..sections import Mode

MAX_TOP_K = 100


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1, description="bounded by the body limit (413)")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    mode: Mode = "hybrid"


class EmbeddingRequest(BaseModel):
    """OpenAI's body; `model` is accepted and ignored (one embedder is served)."""

    input: str | list[str] = Field(..., min_length=1)
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatRequest(BaseModel):
    """OpenAI's chat body, plus `top_k` and `mode` for the retrieval step."""

    messages: list[Message] = Field(..., min_length=1)
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=1024)
    max_completion_tokens: int | None = Field(None, ge=1, le=1024)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(4, ge=1, le=20, description="chunks retrieved as context")
    mode: Mode = "hybrid"

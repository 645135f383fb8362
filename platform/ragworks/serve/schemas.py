"""Request bodies: FastAPI answers 422 with the failing field's path for anything else."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from ..sections import Mode

MAX_TOP_K = 100
MAX_CHOICES = 4  # each choice is a whole generation on the served model


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1, description="bounded by the body limit (413)")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    mode: Mode = "hybrid"
    rerank: bool | None = Field(None, description="re-rank the hits with the server's cross-encoder (default: on "
                                "when the server has one)")


class EmbeddingRequest(BaseModel):
    """OpenAI's body: `input` a string, strings, token ids or lists of token ids (`tokens.texts_of`); `model`
    the served embedder's id or unset."""

    input: str | list[str] | list[int] | list[list[int]] = Field(..., min_length=1)
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class TextPart(BaseModel):
    """A content part as current OpenAI clients send it; only text parts (images and audio answer 422)."""

    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart]

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, v):
        for i, part in enumerate(v if isinstance(v, list) else []):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text":
                raise PydanticCustomError("content_part", "part {i}: only text parts are supported, not '{kind}'",
                                          {"i": i, "kind": kind})
        return v

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat body, plus `top_k` and `mode` for the retrieval step."""

    messages: list[Message] = Field(..., min_length=1)
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=1024)
    max_completion_tokens: int | None = Field(None, ge=1, le=1024)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, description="up to 4 sequences; the answer ends before the first")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="answers to write (each one generation); not with stream")
    stream_options: StreamOptions | None = None
    top_k: int = Field(4, ge=1, le=20, description="chunks retrieved as context")
    mode: Mode = "hybrid"
    rerank: bool | None = Field(None, description="re-rank the hits with the server's cross-encoder (default: on "
                                "when the server has one)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("at most 4 non-empty stop sequences")
        return stops or None

    @field_validator("n")
    @classmethod
    def _one_stream(cls, v, info: ValidationInfo):
        if v > 1 and info.data.get("stream"):
            raise PydanticCustomError("n_with_stream", "n > 1 is not supported with stream: true")
        return v

    def sampling(self, default_max_tokens: int) -> dict:
        """The generator's arguments: the OpenAI names, one answer's worth."""
        return {"max_tokens": self.max_completion_tokens or self.max_tokens or default_max_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "stop": self.stop}

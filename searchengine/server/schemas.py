"""Request bodies of the HTTP API (pydantic), with the hard caps that appear in the OpenAPI schema."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SearchParams", "AskBody", "IndexBody", "ImportBody", "RemoveBody", "HARD_MAX_K", "HARD_MAX_CHARS"]

#: Schema-level caps; a server's own limits (ServerConfig) may be lower.
HARD_MAX_K = 1000
HARD_MAX_CHARS = 4000


class SearchParams(BaseModel):
    """A text (or composed) search. ``q``: plain words; ``query``: the composition grammar
    (``'"red dress" - "long sleeves"'``). ``filter``: a where-expression (``price < 50 and color = red``)."""

    model_config = ConfigDict(extra="forbid")

    q: Optional[str] = Field(None, max_length=HARD_MAX_CHARS, description="the words to search for")
    query: Optional[str] = Field(None, max_length=HARD_MAX_CHARS, description="a composed query")
    filter: Optional[str] = Field(None, max_length=HARD_MAX_CHARS, description="a where-expression")
    k: int = Field(10, ge=1, le=HARD_MAX_K, description="how many hits")
    mode: Literal["vector", "keyword", "hybrid"] = "vector"
    keyword_weight: float = Field(0.5, ge=0.0, le=1.0)
    min_score: Optional[float] = Field(None, ge=-1e6, le=1e6)
    sort: Literal["score", "date"] = "score"
    dedup: Optional[float] = Field(None, gt=0.0, le=1.0, description="collapse near-duplicates above this cosine")
    group: bool = Field(True, description="one hit per product")
    rerank: bool = Field(False, description="rerank the first hits with the cross-attention matcher")
    rerank_top: int = Field(20, ge=1, le=200)
    caption: bool = Field(False, description="a generated caption for each hit")
    ask: Optional[str] = Field(None, max_length=500, description="a question answered for each hit")


class AskBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(..., min_length=1, max_length=500)


class IndexBody(BaseModel):
    """Folders or files on the server to index (incrementally) into the collection."""

    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(..., min_length=1, max_length=1000)
    ocr: Optional[bool] = None
    retry_errors: bool = False


class ImportBody(BaseModel):
    """A catalog file on the server (CSV, TSV, JSONL, JSON, Parquet) to import."""

    model_config = ConfigDict(extra="forbid")

    catalog: str = Field(..., min_length=1, max_length=HARD_MAX_CHARS)
    prune: bool = True
    refresh: bool = False


class RemoveBody(BaseModel):
    """Files or folders whose images leave the collection."""

    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(..., min_length=1, max_length=1000)

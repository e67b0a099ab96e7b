"""Retrieval and embeddings with a SimBERT encoder (--model) and its FAISS index (--index):
POST /v1/search, and POST /v1/embeddings in the shape of OpenAI's API. The SimBERT model argument
is declared here; the generator capability uses it too."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from pathlib import Path

from fastapi import APIRouter

from serving.checks import InputError, is_local
from serving.deployments import ModelDeployment, _Batches, batched, model_deployment
from serving.errors import ApiError, limit
from serving.model_store import MLFLOW_SCHEMES, resolve_index, resolve_model
from serving.registry import AppArg, Capability, register
from serving.schemas import EmbeddingsRequest, EmbeddingsResponse, SearchRequest, SearchResponse


@model_deployment("retriever")
class RetrieverDeployment(ModelDeployment):
    def __init__(self, model: str, index: str | None, batching: dict, max_length: int = 64,
                 device: str | None = None, dtype: str | None = None):
        from serving.retriever import Retriever

        index_dir = resolve_index(index) if index else None        # a bucket index: this node's cache
        self.model = Retriever(resolve_model(model), index_dir, max_length=max_length, device=device, dtype=dtype)
        self.batches = _Batches(batching, self.search_many, self.embed_many)

    @batched
    async def search_many(self, calls: list[list[tuple[str, int]]]) -> list[list[list[dict] | ApiError]]:
        """Each call: [(query, k), ...] → the hits of each query. A replica without an index
        answers each query with a 404, rather than every request paying a round trip to ask first."""
        if self.model.index is None:
            return [[ApiError(404, "no_index", "no index is loaded: start the server with --index DIR")
                     for _ in call] for call in calls]

        def search(items):
            return self.model.search([q for q, _ in items], [k for _, k in items])
        return self.batches.answer_each(search, calls)

    @batched
    async def embed_many(self, calls: list[list[str]]) -> list[list[dict]]:
        """Each call: texts → their {"embedding", "tokens"}."""
        return self.batches.answer_each(self.model.embed, calls)


def as_base64(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64: what the openai SDK decodes (numpy's float32 or
    array('f')) back into the same float32 values."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


router = APIRouter()


class RetrieverRoutes:
    @router.post("/v1/search", response_model=SearchResponse)
    async def search(self, req: SearchRequest) -> dict:
        self._text("query", req.query)
        limit(req.k <= self.limits.max_k, f"k={req.k} exceeds the limit of {self.limits.max_k}", "k")
        return {"hits": await self._batched("retriever", "search", "search_many", (req.query, req.k))}

    @router.post("/v1/embeddings", response_model=EmbeddingsResponse)
    async def embeddings(self, req: EmbeddingsRequest) -> dict:
        texts = [req.input] if isinstance(req.input, str) else req.input
        limit(len(texts) <= self.limits.max_batch_inputs,
              f"{len(texts)} inputs exceed the limit of {self.limits.max_batch_inputs}", "input")
        for i, text in enumerate(texts):
            self._text(f"input.{i}", text)
        info = await self._model("retriever", "embeddings", req.model)
        size = info["dimensions"]
        if req.dimensions is not None and req.dimensions != size:
            # The vectors are not trained to keep their meaning when cut (not Matryoshka): no truncation.
            why = "exceeds the model's" if req.dimensions > size else "is not the model's; its vectors cannot be cut to"
            raise ApiError(400, "invalid_request", f"dimensions={req.dimensions} {why} {size} dimensions "
                           f"(omit dimensions or send {size})", "dimensions")
        outs = await asyncio.gather(*(self._batched("retriever", "embeddings", "embed_many", t) for t in texts))
        encode = as_base64 if req.encoding_format == "base64" else list
        tokens = sum(out["tokens"] for out in outs)
        return {"object": "list", "model": req.model or info["id"],
                "data": [{"object": "embedding", "index": i, "embedding": encode(out["embedding"])}
                         for i, out in enumerate(outs)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def check_index(index: str, checked: dict) -> str:
    """An index directory (local, or a bucket / MLflow URI the replicas download), built with the
    model given (checked by fingerprint when the model is local). A local index is made absolute;
    a bucket index is checked by reading its index.json only."""
    from components import objectstore
    from components.weights import model_fingerprint

    if is_local(index):
        meta_path = Path(index) / "index.json"
        if not meta_path.is_file():
            raise InputError(f"index: '{index}' is not an index directory (no index.json)")
        text, where = meta_path.read_text(encoding="utf-8"), str(meta_path)
    elif objectstore.is_remote(index) and index.startswith(objectstore.SCHEMES):
        where = objectstore.join(index, "index.json")
        try:
            objectstore.pin_index(index)
            text = objectstore.read_bytes(where).decode("utf-8")
        except objectstore.LocationError as exc:
            raise InputError(f"index: {exc}") from None
    elif index.startswith(MLFLOW_SCHEMES):
        return index                  # an MLflow artifact: resolved and checked where it is loaded
    else:
        raise InputError(f"index: '{index}': unknown scheme (use a directory, runs:/ or one of "
                         f"{', '.join(objectstore.SCHEMES)})")
    try:
        built_with = str(json.loads(text)["model_fingerprint"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"index: {where}: damaged index metadata ({exc})") from None
    model = checked["model"]
    if is_local(model) and built_with != (ours := model_fingerprint(model)):
        raise InputError(f"index: '{index}' was built with another model (fingerprint {built_with[:12]}, "
                         f"the model is {ours[:12]}); rebuild it with `bert4ray index`")
    return str(Path(index).resolve()) if is_local(index) else index


register(Capability(
    name="retriever", deployment=RetrieverDeployment, enabled_by="model",
    args=(AppArg("model", "SimBERT model directory or MLflow model URI"),
          AppArg("index", "index built by `bert4ray index`: a directory or a bucket URI", check=check_index,
                 requires="model", requires_why="an index needs the model that built it")),
    bind_args=lambda args, batching: (args.model, args.index, batching, args.max_length),
    routes=RetrieverRoutes, router=router))

"""Paraphrase generation with the SimBERT model (--model, declared by the retriever capability):
POST /v1/similar."""

from __future__ import annotations

from fastapi import APIRouter

from serving.deployments import ModelDeployment, _Batches, batched, model_deployment
from serving.errors import ApiError, limit
from serving.model_store import resolve_model
from serving.registry import Capability, register
from serving.schemas import SimilarRequest, SimilarResponse


@model_deployment("generator")
class GeneratorDeployment(ModelDeployment):
    def __init__(self, model: str, batching: dict, max_length: int = 64, device: str | None = None,
                 dtype: str | None = None):
        from serving.generator import Generator

        self.model = Generator(resolve_model(model), max_length=max_length, device=device, dtype=dtype)
        self.batches = _Batches(batching, self.similar_many)

    @batched
    async def similar_many(self, calls: list[list[dict]]) -> list[list[list[dict] | ApiError]]:
        """Each call: [{"text", "n", "k", "decoding"}, ...] → each request's candidates, or a 400
        when the decoder rejects its settings."""
        return self.batches.answer_each(self.model.similar_many, calls, param="decoding")


router = APIRouter()


class GeneratorRoutes:
    @router.post("/v1/similar", response_model=SimilarResponse)
    async def similar(self, req: SimilarRequest) -> dict:
        self._text("text", req.text)
        limit(req.n <= self.limits.max_n, f"n={req.n} exceeds the limit of {self.limits.max_n}", "n")
        limit(req.k <= self.limits.max_k, f"k={req.k} exceeds the limit of {self.limits.max_k}", "k")
        steps = req.decoding.max_new_tokens or self.limits.max_new_tokens
        limit(steps <= self.limits.max_new_tokens,
              f"decoding.max_new_tokens={steps} exceeds the limit of {self.limits.max_new_tokens}",
              "decoding.max_new_tokens")
        limit(req.decoding.min_new_tokens <= steps,
              f"decoding.min_new_tokens={req.decoding.min_new_tokens} exceeds max_new_tokens={steps}",
              "decoding.min_new_tokens")
        item = req.model_dump()
        item["decoding"]["max_new_tokens"] = steps
        return {"candidates": await self._batched("generator", "paraphrase generation", "similar_many", item)}


register(Capability(
    name="generator", deployment=GeneratorDeployment, enabled_by="model",
    bind_args=lambda args, batching: (args.model, batching, args.max_length),
    routes=GeneratorRoutes, router=router))

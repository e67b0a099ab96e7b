"""Perturbed Masking with a masked LM (--parser-model): POST /v1/segment and POST /v1/parse."""

from __future__ import annotations

from fastapi import APIRouter

from serving.deployments import ModelDeployment, _Batches, batched, model_deployment
from serving.model_store import resolve_model
from serving.registry import AppArg, Capability, register
from serving.schemas import ParseRequest, ParseResponse, SegmentRequest, SegmentResponse


@model_deployment("parser")
class ParserDeployment(ModelDeployment):
    """Requests that arrive together are segmented (and parsed) together: the masked copies of all
    their texts share forward passes."""

    def __init__(self, model: str, batching: dict, device: str | None = None, dtype: str | None = None):
        from serving.parser import Parser

        self.model = Parser(resolve_model(model), device=device, dtype=dtype)
        self.batches = _Batches(batching, self.segment_many, self.parse_many)

    @batched
    async def segment_many(self, calls: list[list[str]]) -> list[list[list[str]]]:
        """Each call: texts → their words."""
        return self.batches.answer_each(self.model.segment_many, calls)

    @batched
    async def parse_many(self, calls: list[list[dict]]) -> list[list[dict]]:
        """Each call: [{"text", ...}, ...] → each parse, or a 400."""
        return self.batches.answer_each(self.model.parse_many, calls)


router = APIRouter()


class ParserRoutes:
    @router.post("/v1/segment", response_model=SegmentResponse)
    async def segment(self, req: SegmentRequest) -> dict:
        self._text("text", req.text)
        return {"words": await self._batched("parser", "segmentation", "segment_many", req.text)}

    @router.post("/v1/parse", response_model=ParseResponse)
    async def parse(self, req: ParseRequest) -> dict:
        self._text("text", req.text)
        return await self._batched("parser", "parsing", "parse_many", req.model_dump())


register(Capability(
    name="parser", deployment=ParserDeployment, enabled_by="parser_model",
    args=(AppArg("parser_model", "masked LM (mlm task) for /v1/segment and /v1/parse"),),
    bind_args=lambda args, batching: (args.parser_model, batching),
    routes=ParserRoutes, router=router))

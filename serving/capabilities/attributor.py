"""Integrated Gradients over a classifier (--attribution-model): POST /v1/attribute, as JSON or,
for Accept: text/html, as a heat map."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from serving.deployments import ModelDeployment, _Batches, batched, model_deployment
from serving.errors import limit
from serving.loaded_model import LoadedModel
from serving.model_store import resolve_model
from serving.registry import AppArg, Capability, register
from serving.schemas import AttributeRequest, AttributeResponse


@model_deployment("attributor")
class AttributorDeployment(ModelDeployment):
    """Requests with the same options are attributed together: texts of equal length share
    forward/backward passes (components.attribution never pads)."""

    def __init__(self, model: str, batching: dict, device: str | None = None, dtype: str | None = None):
        from components.attribution import Attributor

        model_dir = resolve_model(model)
        self.attributor = Attributor.from_pretrained(model_dir, device=device, dtype=dtype)
        self.model = LoadedModel(model_dir, kind="classifier")
        self.batches = _Batches(batching, self.attribute_many)

    def info(self) -> dict:
        return {**super().info(), "labels": self.attributor.labels}

    def _attribute(self, items: list[dict]) -> list[dict]:
        out: list[dict | None] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(repr(sorted((k, v) for k, v in item.items() if k != "text")), []).append(i)
        for rows in groups.values():
            o = items[rows[0]]
            try:
                results = self.attributor.attribute_batch(
                    [items[i]["text"] for i in rows], target=o["target"], n_steps=o["steps"], rule=o["rule"],
                    quantity=o["quantity"], baseline=o["baseline"])
                for i, r in zip(rows, results):
                    out[i] = r.to_dict()
            except ValueError as exc:               # e.g. an unknown target label: the client's mistake
                for i in rows:
                    out[i] = {"error": str(exc)}
        return out

    @batched
    async def attribute_many(self, calls: list[list[dict]]) -> list[list[dict]]:
        """Each call: [{"text", "target", "steps", ...}, ...] → each attribution, or a 400."""
        return self.batches.answer_each(self._attribute, calls)


router = APIRouter()


class AttributorRoutes:
    @router.post("/v1/attribute", response_model=AttributeResponse,
                 responses={200: {"content": {"text/html": {}},
                                  "description": "JSON, or the heat map for Accept: text/html"}})
    async def attribute(self, req: AttributeRequest, request: Request):
        self._text("text", req.text)
        limit(req.steps <= self.limits.max_steps, f"steps={req.steps} exceeds the limit of {self.limits.max_steps}",
              "steps")
        out = await self._batched("attributor", "attribution", "attribute_many", req.model_dump())
        accept = request.headers.get("accept", "")
        if "text/html" in accept and "application/json" not in accept:
            from components.attribution import Attribution
            from components.attribution_html import render_html
            return HTMLResponse(render_html(Attribution(**out)))
        return {"label": out["label"], "prob": out["prob"], "target": out["target_label"], "tokens": out["tokens"],
                "scores": out["scores"], "norms": out["norms"], "delta": out["delta"]}


register(Capability(
    name="attributor", deployment=AttributorDeployment, enabled_by="attribution_model",
    args=(AppArg("attribution_model", "classifier (classify task) for /v1/attribute"),),
    bind_args=lambda args, batching: (args.attribution_model, batching),
    routes=AttributorRoutes, router=router))

"""A capability defined outside serving/, as a user adds one: a toy "model" (a directory whose
config.json holds a prefix) that answers each text with the prefix and the text's length, on
POST /v1/toy-echo. This module's `register(...)` call is all it takes: the server imports it when
BERT4RAY_CAPABILITIES names it (with the repository on PYTHONPATH), which gives `python -m serving`
the flag --toy-model, the builder the argument toy_model, and the ingress the route."""

from __future__ import annotations

import json

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from serving.deployments import ModelDeployment, _Batches, batched, model_deployment
from serving.loaded_model import LoadedModel
from serving.model_store import resolve_model
from serving.registry import AppArg, Capability, register


class Echo(LoadedModel):
    kind = "toy-echo"

    def __init__(self, model_dir):
        super().__init__(model_dir)
        self.prefix = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))["prefix"]

    def echo_many(self, texts: list[str]) -> list[dict]:
        return [{"echo": self.prefix + t, "length": len(t)} if t.strip() else {"error": "nothing to echo"}
                for t in texts]


@model_deployment("toy")
class ToyDeployment(ModelDeployment):
    def __init__(self, model: str, batching: dict, device: str | None = None, dtype: str | None = None):
        self.model = Echo(resolve_model(model))
        self.batches = _Batches(batching, self.echo_many)

    @batched
    async def echo_many(self, calls: list[list[str]]) -> list[list[dict]]:
        return self.batches.answer_each(self.model.echo_many, calls, param="text")


class EchoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str


class EchoResponse(BaseModel):
    echo: str
    length: int


router = APIRouter()


class ToyRoutes:
    @router.post("/v1/toy-echo", response_model=EchoResponse)
    async def toy_echo(self, req: EchoRequest) -> dict:
        self._text("text", req.text)
        return await self._batched("toy", "echo", "echo_many", req.text)


register(Capability(
    name="toy", deployment=ToyDeployment, enabled_by="toy_model",
    args=(AppArg("toy_model", "toy echo model directory (config.json with a prefix)"),),
    bind_args=lambda args, batching: (args.toy_model, batching),
    routes=ToyRoutes, router=router))

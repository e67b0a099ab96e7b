"""The Serve application and its builder.

    serve run serving.app:app                                   # model/index from BERT4RAY_MODEL / BERT4RAY_INDEX
    serve run serving.app:build_app model=runs/m index=runs/i   # builder with typed arguments
    serve run serving/config.yaml                               # the shipped Serve config (also `serve deploy`)
    bert4ray serve --model DIR --index DIR                      # the same, with clean start and stop

`model`, `chat_model`, `attribution_model` and `parser_model` accept a model directory or an MLflow model URI
(`models:/name/1`, `models:/name@alias`, `runs:/<id>/model`).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application

from serving.deployments import (
    AttributorDeployment,
    ChatDeployment,
    GeneratorDeployment,
    ParserDeployment,
    RetrieverDeployment,
)
from serving.ingress import Ingress
from serving.resources import INGRESS_CPUS
from serving.schemas import Limits


class Batching(BaseModel):
    """The ingress sends a model deployment the requests that arrive together in one call (at most
    two calls per replica outstanding; what arrives meanwhile leaves with the next), and the model
    computes them together."""
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    """false: every request is a call and a model batch of its own."""
    max_batch_size: int = Field(16, ge=1, le=256)
    """Requests per call and per model batch."""
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1)
    """How long a request waits for others to join it when the model is free."""


DEPLOYMENTS = ("retriever", "generator", "chat", "attributor", "parser")
DEVICE_PATTERN = r"^(cpu|auto|cuda(:\d+)?)$"
Dtype = Literal["float32", "bfloat16", "float16"]


class Placement(BaseModel):
    """One model deployment's replicas: what they ask Ray for and where the model runs. Unset
    fields take the value of `scaling`."""
    model_config = ConfigDict(extra="forbid")
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)
    device: str | None = Field(None, pattern=DEVICE_PATTERN)
    dtype: Dtype | None = None


class Scaling(BaseModel):
    """Replica settings applied to every model deployment (the ingress keeps one replica per node);
    `per_deployment` overrides the resources, device and dtype of single deployments."""
    model_config = ConfigDict(extra="forbid")
    num_replicas: int | str = 1
    """A count, or "auto" to use `autoscaling`."""
    autoscaling: dict | None = None
    """Ray Serve autoscaling_config, e.g. {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 8}."""
    num_cpus: float | None = Field(None, gt=0)
    """CPUs per model replica; unset: the cluster's CPUs less the ingress' share, split among the
    model replicas (see serving/resources.py)."""
    num_gpus: float = Field(0, ge=0)
    """GPUs per model replica (a fraction shares one GPU among replicas)."""
    device: str | None = Field(None, pattern=DEVICE_PATTERN)
    """Where each replica runs its model: cpu, cuda, cuda:N or auto; unset: cuda when the replica
    has GPUs, else cpu. Ray shows a replica only the GPUs it asked for, so cuda needs num_gpus > 0."""
    dtype: Dtype = "float32"
    """The models' dtype; bfloat16 or float16 halve memory and speed up GPUs (float32 sums kept
    where they matter: norms, softmax, sampling, attributions)."""
    per_deployment: dict[Literal[DEPLOYMENTS], Placement] = Field(default_factory=dict)
    """e.g. {generator: {num_gpus: 1, dtype: bfloat16}, parser: {num_cpus: 1}}."""
    max_ongoing_requests: int = Field(64, ge=1)
    ingress_max_ongoing_requests: int = Field(256, ge=1)
    """The ingress only awaits the model deployments, so it admits many requests at once. Serve's
    default of 5 would cap what reaches a model replica (and so its batches) at 5, and above that
    the proxy's back-off made throughput collapse (8 req/s at 32 concurrent clients, vs 65 at 8)."""

    def placement(self, name: str) -> Placement:
        """Deployment `name`'s settings with every field resolved but an automatic num_cpus (None)."""
        own = self.per_deployment.get(name) or Placement()
        gpus = self.num_gpus if own.num_gpus is None else own.num_gpus
        device = own.device or self.device or ("cuda" if gpus > 0 else "cpu")
        return Placement(num_cpus=own.num_cpus if own.num_cpus is not None else self.num_cpus, num_gpus=gpus,
                         device=device, dtype=own.dtype or self.dtype)

    @model_validator(mode="after")
    def _gpus_for_cuda(self):
        for name in DEPLOYMENTS:
            p = self.placement(name)
            if p.device.startswith("cuda") and not p.num_gpus:
                where = f"per_deployment.{name}" if name in self.per_deployment else "scaling"
                raise ValueError(f"{where}: device {p.device} needs num_gpus > 0 (Ray shows a replica "
                                 "only the GPUs it asks for)")
        return self


class AppArgs(BaseModel):
    """Typed arguments of the application builder (also the `args:` of serving/config.yaml)."""
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    """SimBERT model (generation, retrieval, embeddings): directory or MLflow URI."""
    index: str | None = None
    """Index directory built by `bert4ray index` with the same model."""
    chat_model: str | None = None
    """Dialogue LM for /v1/chat/completions."""
    attribution_model: str | None = None
    """Classifier (classify task) for /v1/attribute."""
    parser_model: str | None = None
    """Masked LM (mlm task) for /v1/segment and /v1/parse (Perturbed Masking)."""
    max_length: int = Field(64, ge=8, le=512)
    limits: Limits = Field(default_factory=Limits)
    batching: Batching = Field(default_factory=Batching)
    scaling: Scaling = Field(default_factory=Scaling)
    api_key_env: str = "BERT4RAY_API_KEY"
    """Name of the environment variable that holds the API key; unset variable = no key required."""


def _options(scaling: Scaling) -> dict:
    opts = {"max_ongoing_requests": scaling.max_ongoing_requests}
    if scaling.num_replicas == "auto" or scaling.autoscaling:
        opts["autoscaling_config"] = scaling.autoscaling or {"min_replicas": 1, "max_replicas": 2}
    else:
        opts["num_replicas"] = int(scaling.num_replicas)
    return opts


def _max_replicas(scaling: Scaling) -> int:
    if "autoscaling_config" in (opts := _options(scaling)):
        return int(opts["autoscaling_config"].get("max_replicas", 1))
    return opts["num_replicas"]


def model_deployments(args: AppArgs) -> list[str]:
    """The model deployments that `args` asks for, by name."""
    names = ["retriever", "generator"] if args.model else []
    return names + [name for name, given in (("chat", args.chat_model), ("attributor", args.attribution_model),
                                             ("parser", args.parser_model)) if given]


def cpus_per_replica(args: AppArgs) -> dict[str, float]:
    """`num_cpus` where given (per deployment, else `scaling.num_cpus`); the other deployments
    split what the cluster has left after those among their replicas."""
    names = model_deployments(args)
    fixed = {n: c for n in names if (c := args.scaling.placement(n).num_cpus) is not None}
    auto = [n for n in names if n not in fixed]
    if not auto:
        return fixed
    from serving.resources import cluster_cpus, split_cpus
    total, largest = cluster_cpus()
    replicas = _max_replicas(args.scaling)
    shares = split_cpus(dict.fromkeys(auto, replicas), total - replicas * sum(fixed.values()), largest)
    return {n: fixed[n] if n in fixed else shares[n] for n in names}


def _actor_options(args: AppArgs, name: str, cpus: float) -> dict:
    gpus = args.scaling.placement(name).num_gpus
    return {"num_cpus": cpus, **({"num_gpus": gpus} if gpus else {})}


def _placed(args: AppArgs, name: str) -> dict:
    """The device and dtype a deployment's constructor takes."""
    p = args.scaling.placement(name)
    return {"device": p.device, "dtype": p.dtype}


def build_app(args: dict | AppArgs) -> Application:
    args = args if isinstance(args, AppArgs) else AppArgs(**args)
    if not (args.model or args.chat_model or args.attribution_model or args.parser_model):
        raise ValueError("nothing to serve: give model (SimBERT), chat_model, attribution_model and/or parser_model")
    if args.index and not args.model:
        raise ValueError("an index needs the model that built it: give model as well")
    cpus = cpus_per_replica(args)

    def opts(name: str) -> dict:
        return {**_options(args.scaling), "ray_actor_options": _actor_options(args, name, cpus[name])}
    batching = args.batching.model_dump()
    bound = {}
    if args.model:
        bound["retriever"] = RetrieverDeployment.options(**opts("retriever")).bind(
            args.model, args.index, batching, args.max_length, **_placed(args, "retriever"))
        bound["generator"] = GeneratorDeployment.options(**opts("generator")).bind(
            args.model, batching, args.max_length, **_placed(args, "generator"))
    if args.chat_model:
        bound["chat"] = ChatDeployment.options(**opts("chat")).bind(args.chat_model, **_placed(args, "chat"))
    if args.attribution_model:
        bound["attributor"] = AttributorDeployment.options(**opts("attributor")).bind(
            args.attribution_model, batching, **_placed(args, "attributor"))
    if args.parser_model:
        bound["parser"] = ParserDeployment.options(**opts("parser")).bind(
            args.parser_model, batching, **_placed(args, "parser"))
    # The key travels from the environment of the process that builds the app (serve run,
    # bert4ray serve) to the ingress replicas, never through a config file.
    env = {args.api_key_env: os.environ[args.api_key_env]} if os.environ.get(args.api_key_env) else {}
    ingress_opts = {"num_cpus": INGRESS_CPUS, **({"runtime_env": {"env_vars": env}} if env else {})}
    return Ingress.options(ray_actor_options=ingress_opts,
                           max_ongoing_requests=args.scaling.ingress_max_ongoing_requests).bind(
        limits=args.limits.model_dump(), api_key_env=args.api_key_env, batching=batching,
        inflight_calls=2 * _max_replicas(args.scaling), **bound)


def _env_args() -> dict:
    root = os.path.join("bert4ray-runs", "quickstart")
    args = {"model": os.environ.get("BERT4RAY_MODEL", os.path.join(root, "model"))}
    index = os.environ.get("BERT4RAY_INDEX", os.path.join(root, "index"))
    if index and os.path.isdir(index):
        args["index"] = index
    for key in ("chat_model", "attribution_model", "parser_model"):
        if os.environ.get(f"BERT4RAY_{key.upper()}"):
            args[key] = os.environ[f"BERT4RAY_{key.upper()}"]
    return args


def __getattr__(name: str):
    """`serve run serving.app:app` builds the app when it asks for it, not when the module is
    imported (the builder reads the cluster's CPUs, and importing must stay cheap)."""
    if name == "app":
        return build_app(_env_args())
    raise AttributeError(f"module 'serving.app' has no attribute {name!r}")

"""The Serve application and its builder.

    serve run serving.app:app                                   # model/index from BERT4RAY_MODEL / BERT4RAY_INDEX
    serve run serving.app:build_app model=runs/m index=runs/i   # builder with typed arguments
    serve run serving/config.yaml                               # the shipped Serve config (also `serve deploy`)
    bert4ray serve --model DIR --index DIR                      # the same, with clean start and stop

The model arguments (`model`, `chat_model`, `attribution_model`, `parser_model`) accept a model
directory or an MLflow model URI (`models:/name/1`, `models:/name@alias`, `runs:/<id>/model`).
Which arguments there are, and which deployments they start, comes from the capability registry
(serving/registry.py).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from ray.serve import Application

from serving.deployments import Batching
from serving.ingress import Ingress
from serving.registry import app_args, capabilities, enabled, enabling_args
from serving.resources import INGRESS_CPUS
from serving.schemas import Limits

DEPLOYMENTS = tuple(c.name for c in capabilities())
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


class _SharedArgs(BaseModel):
    """The builder's arguments that every capability shares."""
    max_length: int = Field(64, ge=8, le=512)
    limits: Limits = Field(default_factory=Limits)
    batching: Batching = Field(default_factory=Batching)
    scaling: Scaling = Field(default_factory=Scaling)
    api_key_env: str = "BERT4RAY_API_KEY"
    """Name of the environment variable that holds the API key; unset variable = no key required."""


def _app_args_model() -> type[BaseModel]:
    """AppArgs: each registered capability's arguments (unset by default), then the shared ones."""
    own = {arg.name: (str | None, Field(None, description=arg.help)) for arg in app_args()}
    shared = {name: (info.annotation, info) for name, info in _SharedArgs.model_fields.items()}
    return create_model("AppArgs", __config__=ConfigDict(extra="forbid"), __module__=__name__,
                        __doc__="Typed arguments of the application builder (also the `args:` of "
                                "serving/config.yaml).", **own, **shared)


AppArgs = _app_args_model()


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
    return [c.name for c in enabled(args)]


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


def _check_given(args: AppArgs) -> None:
    if not enabled(args):
        *first, last = enabling_args()
        raise ValueError(f"nothing to serve: give {', '.join(first)} and/or {last}" if first
                         else f"nothing to serve: give {last}")
    for arg in app_args():
        if arg.requires and getattr(args, arg.name) and not getattr(args, arg.requires):
            raise ValueError(f"{arg.requires_why}: give {arg.requires} as well")


def build_app(args: dict | AppArgs) -> Application:
    args = args if isinstance(args, AppArgs) else AppArgs(**args)
    _check_given(args)
    cpus = cpus_per_replica(args)
    batching = args.batching.model_dump()
    bound = {}
    for capability in enabled(args):
        name = capability.name
        options = {**_options(args.scaling), "ray_actor_options": _actor_options(args, name, cpus[name])}
        bound[name] = capability.deployment.options(**options).bind(*capability.bind_args(args, batching),
                                                                    **_placed(args, name))
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
    for arg in app_args():          # BERT4RAY_CHAT_MODEL, ...; model and index have defaults above
        if arg.name not in ("model", "index") and os.environ.get(f"BERT4RAY_{arg.name.upper()}"):
            args[arg.name] = os.environ[f"BERT4RAY_{arg.name.upper()}"]
    return args


def __getattr__(name: str):
    """`serve run serving.app:app` builds the app when it asks for it, not when the module is
    imported (the builder reads the cluster's CPUs, and importing must stay cheap)."""
    if name == "app":
        return build_app(_env_args())
    raise AttributeError(f"module 'serving.app' has no attribute {name!r}")

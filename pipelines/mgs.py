"""`bert4ray mgs`: MGS fine-tuning of a generating model (SimBERT or dialogue LM) towards BLEU / F1,
with the K candidates of every step evaluated in parallel on Ray actors.

    from pipelines.mgs import load_mgs_recipe, run_mgs
    result = run_mgs(load_mgs_recipe("pipelines/recipes/mgs-simbert.yaml", ["mgs.mixture=0"]))
    result.model_dir, result.history          # best-on-dev model; per-step costs, weights, dev scores

One step (components/mgs.py has the update itself):
  1. a batch of training examples; C(θ) = 1 − metric of the current model's outputs (the recipe's
     decoding, greedy by default);
  2. the MLE gradient g of the references' cross-entropy, zeroed outside `mgs.parameters` and
     clipped to `optim.max_grad_norm`; tensors with g = 0 (e.g. the pooler) are left alone;
  3. K candidates (seed, component); θ and g go once into the object store; every actor holds the
     model once, regenerates each of its candidates' Δ from the seed, loads θ + Δ, decodes the
     batch and returns (C(θ + Δ), log q(Δ));
  4. the weights, the direction Σ w_k Δ_k (regenerated from the seeds on the driver), one AdamW step.
The dev metric is measured at step 0 and every `eval_every` steps; the best model on dev is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from components.io import atomic_directory
from components.mgs import (
    Candidate,
    MGSConfig,
    as_tensors,
    draw_candidates,
    load_parameters,
    log_q,
    log_weights,
    movable,
    noise_scales,
    perturbation,
    update_direction,
    weight_entropy,
)
from pipelines.job import new_run_id
from pipelines.objectives import METRICS, Example, GenerationSystem, read_examples, score
from pipelines.sections import (
    RecipeError,
    TrackingSection,
    bounded,
    check_local_workdir,
    choice,
    load_sections,
    recipe_dataclass,
    to_yaml,
    tracking_field,
)
from pipelines.storage import job_output, publish_output


# --- recipe --------------------------------------------------------------------------------------
@dataclass
class MGSData:
    train: str = ""
    """Training examples (JSON Lines / Parquet): {"texts": [...]}, {"turns": [...]} or {"source", "target"}."""
    dev: str | None = None
    """Dev examples; None = hold out `dev_fraction` of `train` by a hash of each row's first sentence
    (the split `bert4ray train` makes with the same seed and fraction)."""
    dev_fraction: float = 0.1
    max_train_rows: int = 0
    max_dev_rows: int = 200
    batch_size: int = bounded(16, at_least=1)
    """Examples per step: the batch that C(θ), the gradient and every candidate are measured on."""
    max_length: int = bounded(64, at_least=8)
    """Tokens of source + output."""


@dataclass
class MGSOptim:
    lr: float = bounded(1e-4, above=0)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    """Clips the MLE gradient before the proposals and the MGS direction before the step (0 = off)."""


@dataclass
class MGSParallel:
    num_actors: int = bounded(2, at_least=0)
    """Ray actors that evaluate candidates, each holding the model once (0 = sequentially in this process)."""
    cpus_per_actor: float = 1.0
    threads_per_actor: int = bounded(1, at_least=1)
    max_restarts: int = 2
    """A crashed actor is restarted by Ray and its candidates retried (evaluation is idempotent)."""


@recipe_dataclass
class MGSRecipe:
    name: str = "mgs"
    seed: int = 0
    workdir: str = "bert4ray-runs"
    model: str = ""
    """The starting model directory (a simbert or dialog model, e.g. trained by MLE with `bert4ray train`)."""
    metric: str = choice(*METRICS)
    """The cost is 1 − metric: `bleu` (sacrebleu, zh tokenization) or `f1` (token-level)."""
    steps: int = bounded(50, at_least=1)
    eval_every: int = bounded(10, at_least=1)
    decoding: dict[str, Any] = field(default_factory=lambda: {"strategy": "greedy", "max_new_tokens": 32})
    """How outputs are produced, for the cost and for the dev metric (see DecodingConfig)."""
    data: MGSData
    mgs: MGSConfig
    optim: MGSOptim
    parallel: MGSParallel
    tracking: TrackingSection = tracking_field("bert4ray-mgs")

    def check(self) -> None:
        """Checks across the recipe (the `mgs` section checks itself: MGSConfig.check)."""
        from components.decoding import DecodingConfig
        check_local_workdir(self.workdir, "--output")
        if not self.model:
            raise RecipeError("recipe key 'model' must name a model directory")
        if not self.data.train:
            raise RecipeError("recipe key 'data.train' must name a file of training examples")
        if not 0.0 < self.data.dev_fraction < 1.0:
            raise RecipeError("recipe key 'data.dev_fraction' must be in (0, 1)")
        try:
            DecodingConfig.from_dict(self.decoding)
        except (ValueError, TypeError) as exc:
            raise RecipeError(f"recipe section 'decoding': {exc}") from None


def load_mgs_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                    data: dict | None = None) -> MGSRecipe:
    return load_sections(MGSRecipe, path, overrides, data)


# --- data ----------------------------------------------------------------------------------------
def split_examples(recipe: MGSRecipe) -> tuple[list[Example], list[Example]]:
    """(train, dev) examples: the dev file, or the hash split of the training file."""
    from pipelines.data import split_key
    d = recipe.data
    examples = read_examples(d.train)
    if d.dev:
        train, dev = examples, read_examples(d.dev)
    else:
        held = [split_key(e.source[0], recipe.seed) < d.dev_fraction for e in examples]
        train = [e for e, h in zip(examples, held) if not h]
        dev = [e for e, h in zip(examples, held) if h]
    if d.max_train_rows:
        train = train[:d.max_train_rows]
    if d.max_dev_rows:
        dev = dev[:d.max_dev_rows]
    if not train or not dev:
        raise ValueError(f"need training and dev examples, got {len(train)} and {len(dev)} from '{d.train}'")
    return train, dev


# --- candidate evaluation ------------------------------------------------------------------------
class CandidateWorker:
    """Holds one model and evaluates candidates θ + Δ_k, each Δ_k regenerated from its seed. Runs
    as a Ray actor, or in the driver's process on the driver's own model (sequential mode)."""

    def __init__(self, model_dir: str | None = None, max_length: int = 64, threads: int | None = None,
                 system: GenerationSystem | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.system = system or GenerationSystem.from_pretrained(model_dir, max_length)
        self.params = list(self.system.model.parameters())

    def evaluate(self, theta: list, grads: list, sigmas: list[float], candidates: list[Candidate],
                 examples: list[Example], metric: str, decoding: dict, mixture: float, density: str
                 ) -> list[tuple[float, float]]:
        """[(C(θ + Δ_k), log q(Δ_k))] per candidate; the model is left at θ."""
        g = as_tensors(grads)
        refs = [e.references for e in examples]
        out = []
        try:
            for cand in candidates:
                delta = perturbation(g, sigmas, cand)
                load_parameters(self.params, theta, delta)
                hyps = self.system.decode(examples, decoding)
                out.append((1.0 - score(metric, hyps, refs), log_q(delta, g, sigmas, mixture, density)))
        finally:
            load_parameters(self.params, theta)
        return out

    def pid(self) -> int:
        return os.getpid()


class Evaluators:
    """The K candidates of a step spread over the actors (or run in-process), results in order."""

    def __init__(self, recipe: MGSRecipe, system: GenerationSystem):
        self.recipe, self.actors = recipe, []
        p = recipe.parallel
        if p.num_actors == 0:
            self.local = CandidateWorker(system=system)
            return
        import ray

        from pipelines.train import init_ray
        init_ray()
        remote = ray.remote(num_cpus=p.cpus_per_actor, max_restarts=p.max_restarts,
                            max_task_retries=p.max_restarts)(CandidateWorker)
        model_dir = str(Path(recipe.model).resolve())
        self.actors = [remote.remote(model_dir, recipe.data.max_length, p.threads_per_actor)
                       for _ in range(p.num_actors)]

    def evaluate(self, params: list[torch.nn.Parameter], grads: list[torch.Tensor], sigmas: list[float],
                 candidates: list[Candidate], examples: list[Example]) -> list[tuple[float, float]]:
        r, cfg = self.recipe, self.recipe.mgs
        args = (examples, r.metric, r.decoding, cfg.mixture, cfg.density)
        if not self.actors:
            theta = [p.detach().clone() for p in params]
            return self.local.evaluate(theta, grads, sigmas, candidates, *args)
        import ray
        # θ and g enter the object store once per step; every actor reads them from shared memory.
        theta_ref = ray.put([p.detach().numpy() for p in params])
        grads_ref = ray.put([g.detach().numpy() for g in grads])
        shares = [candidates[i::len(self.actors)] for i in range(len(self.actors))]
        futures = [a.evaluate.remote(theta_ref, grads_ref, sigmas, share, *args)
                   for a, share in zip(self.actors, shares) if share]
        results = ray.get(futures)
        out: list[tuple[float, float] | None] = [None] * len(candidates)
        for i, res in enumerate(results):
            for j, value in enumerate(res):
                out[i + j * len(self.actors)] = value
        return out

    def close(self) -> None:
        import ray
        for a in self.actors:
            ray.kill(a)
        self.actors = []


# --- the run -------------------------------------------------------------------------------------
@dataclass
class MGSResult:
    model_dir: Path
    """The best model on dev (the starting model's weights if no step improved it)."""
    output_dir: Path
    history: list[dict]
    dev_start: float
    dev_best: float
    dev_final: float
    mlflow_run_id: str | None = None
    published: str | None = None
    """The bucket location the outputs were uploaded to (--output as a URI)."""


def _clip_(tensors: list[torch.Tensor], max_norm: float) -> float:
    """clip_grad_norm_'s rule for plain tensors (the MLE gradient is not held in .grad); 0 = off."""
    norm = float(torch.nn.utils.get_total_norm(tensors))
    if max_norm > 0 and norm > max_norm:
        for t in tensors:
            t.mul_(max_norm / (norm + 1e-6))
    return norm


def _save(system: GenerationSystem, target: Path, extra: dict) -> None:
    with atomic_directory(target) as tmp:
        system.model.save_pretrained(tmp, metadata={"vocab_file": str(system.tokenizer.vocab_file),
                                                    "task": system.task, **extra})
        system.tokenizer.save_pretrained(tmp)


def _local_model(recipe: MGSRecipe, workdir: Path) -> Path:
    """`model` as a directory: a path, or an MLflow URI from the workdir's tracking store."""
    from pipelines.model_store import resolve_model
    from pipelines.tracking import tracking_uri
    try:
        return resolve_model(recipe.model, tracking_uri=tracking_uri(workdir))
    except (FileNotFoundError, ValueError) as exc:
        raise RecipeError(f"recipe key 'model': {exc}") from None


def run_mgs(recipe: MGSRecipe, progress: bool = True, output: str | Path | None = None) -> MGSResult:
    torch.manual_seed(recipe.seed)
    workdir = Path(recipe.workdir).expanduser().resolve()
    run_id = new_run_id(recipe.name)
    out_dir, publish_to = job_output(output, workdir / "mgs" / run_id)
    model_dir = _local_model(recipe, workdir)
    train, dev = split_examples(recipe)
    system = GenerationSystem.from_pretrained(model_dir, recipe.data.max_length)
    model, cfg = system.model, recipe.mgs
    params = list(model.parameters())
    try:
        may_change = movable([name for name, _ in model.named_parameters()], cfg.parameters)
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    opt = torch.optim.AdamW(params, lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "recipe.yaml").write_text(to_yaml(recipe), encoding="utf-8")

    from pipelines.tracking import tracked_run
    tags = {"bert4ray.command": "mgs", "bert4ray.run_id": run_id}
    with tracked_run(recipe.tracking, workdir, run_id, recipe, tags) as run:
        evaluators = Evaluators(dataclasses.replace(recipe, model=str(model_dir)), system)
        try:
            history, dev_start, best, dev_final = _steps(recipe, system, opt, evaluators, (train, dev),
                                                         may_change, out_dir, run, progress)
        finally:
            if evaluators.actors:
                evaluators.close()
        summary = {f"dev_{recipe.metric}_start": dev_start, f"dev_{recipe.metric}_best": best,
                   f"dev_{recipe.metric}_final": dev_final}
        (out_dir / "history.json").write_text(json.dumps({"summary": summary, "history": history}, indent=1))
        run.log_metrics(summary)
        for name in ("history.json", "recipe.yaml"):
            run.log_artifact(out_dir / name)
        run.log_artifact(out_dir / "model", artifact_path="model")
    publish_output(out_dir, publish_to)
    return MGSResult(out_dir / "model", out_dir, history, dev_start, best, dev_final, run.run_id, publish_to)


def _steps(recipe: MGSRecipe, system: GenerationSystem, opt: torch.optim.Optimizer, evaluators: Evaluators,
           examples: tuple[list[Example], list[Example]], may_change: list[bool], out_dir: Path, run,
           progress: bool) -> tuple[list[dict], float, float, float]:
    """All the steps, the dev metric at step 0 and every eval_every steps, the best model on dev
    written: (history, dev start, dev best, dev final)."""
    train, dev = examples
    metric, rng = recipe.metric, random.Random(recipe.seed)
    system.model.eval()           # dropout off: the cost, the gradient and the candidates see one model
    dev_start = best = dev_final = system.evaluate(dev, metric, recipe.decoding)
    _save(system, out_dir / "model", {"mgs": {"step": 0, f"dev_{metric}": best}})
    history: list[dict] = [{"step": 0, f"dev_{metric}": best}]
    run.log_metrics({f"dev_{metric}": best}, 0)
    _say(progress, f"step 0/{recipe.steps}  dev {metric} {best:.4f}  ({len(train)} train, {len(dev)} dev)")
    for step in range(1, recipe.steps + 1):
        batch = rng.sample(train, min(recipe.data.batch_size, len(train)))
        record = mgs_step(recipe, system, opt, evaluators, batch, step, may_change)
        if step % recipe.eval_every == 0 or step == recipe.steps:
            dev_final = record[f"dev_{metric}"] = system.evaluate(dev, metric, recipe.decoding)
            if dev_final > best:
                best = dev_final
                _save(system, out_dir / "model", {"mgs": {"step": step, f"dev_{metric}": best}})
        history.append(record)
        run.log_metrics({k: v for k, v in record.items() if k != "step"}, step)
        _say(progress, _line(record, recipe))
    return history, dev_start, best, dev_final


def mgs_step(recipe: MGSRecipe, system: GenerationSystem, opt: torch.optim.Optimizer, evaluators: Evaluators,
             batch: list[Example], step: int, may_change: list[bool]) -> dict:
    """One MGS step on `batch` (the module docstring's 1-4, without the dev score); the record logged."""
    t0 = time.perf_counter()
    cfg, params = recipe.mgs, list(system.model.parameters())
    with torch.no_grad():
        cost = 1.0 - score(recipe.metric, system.decode(batch, recipe.decoding), [e.references for e in batch])
    loss, grads = system.mle_gradient(batch)
    for g, ok in zip(grads, may_change):
        if not ok:
            g.zero_()                        # outside mgs.parameters: σ = 0, so Δ = 0 in every candidate
    grad_norm = _clip_(grads, recipe.optim.max_grad_norm)
    sigmas = noise_scales(grads, cfg.noise_scale)
    candidates = draw_candidates(cfg, recipe.seed * 1_000_003 + step)
    results = evaluators.evaluate(params, grads, sigmas, candidates, batch)
    costs, lqs = [c for c, _ in results], [q for _, q in results]
    log_w = log_weights(cost, costs, lqs, cfg.beta)
    direction = update_direction(log_w, grads, sigmas, candidates)
    opt.zero_grad(set_to_none=True)
    for p, d, s in zip(params, direction, sigmas):
        p.grad = -d if s > 0 else None       # no gradient at all: AdamW's weight decay skips it too
    update_norm = _clip_([p.grad for p in params if p.grad is not None], recipe.optim.max_grad_norm)
    opt.step()
    best_k = int(torch.argmax(log_w))
    return {"step": step, "cost": cost, "mle_loss": loss, "grad_norm": grad_norm,
            "update_norm": update_norm, "weight_entropy": weight_entropy(log_w),
            "candidate_cost_min": min(costs), "candidate_cost_mean": sum(costs) / len(costs),
            "top_weight": float(log_w.exp().max()), "top_guided": float(candidates[best_k].guided),
            "seconds": time.perf_counter() - t0}


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, flush=True)


def _line(record: dict, recipe: MGSRecipe) -> str:
    text = (f"step {record['step']}/{recipe.steps}  cost {record['cost']:.4f}  "
            f"candidates min {record['candidate_cost_min']:.4f} mean {record['candidate_cost_mean']:.4f}  "
            f"weight entropy {record['weight_entropy']:.3f}  mle {record['mle_loss']:.3f}  {record['seconds']:.1f}s")
    key = f"dev_{recipe.metric}"
    return text + (f"  dev {recipe.metric} {record[key]:.4f}" if key in record else "")

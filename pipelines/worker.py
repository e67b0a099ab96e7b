"""The per-worker training loop that Ray Train runs on every rank (DeepSpeed engine inside).

Each rank sees the whole (lazily tokenized) training stream in the same seeded order and keeps
every world_size-th row, so the data order is a function of (seed, epoch) alone; masking and
dropout draw from generators seeded by (seed, rank, micro-step). A run resumed from a
checkpoint therefore skips the consumed micro-batches and continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from components.config import ModelConfig
from components.model import Transformer
from pipelines.data import tokenizer_from_text

STATE_FILE = "trainer_state.json"
MODEL_SUBDIR = "model"


def lr_factor(step: int, warmup: int, total: int, decay: str) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if decay == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def deepspeed_config(recipe, world_size: int) -> dict:
    o, d = recipe.optim, recipe.deepspeed
    cfg = {
        "train_micro_batch_size_per_gpu": o.batch_size,
        "gradient_accumulation_steps": o.grad_accum,
        "train_batch_size": o.batch_size * o.grad_accum * world_size,
        "gradient_clipping": o.max_grad_norm,
        "zero_optimization": {"stage": d.zero_stage},
        "bf16": {"enabled": d.precision == "bf16"},
        # A torch AdamW instead of DeepSpeed's: no fused_adam op to compile on first use (~30 s).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    for key, value in d.extra.items():
        cfg[key] = value
    return cfg


def build_optimizer(model: torch.nn.Module, recipe) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
    o = recipe.optim
    return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def micro_batches(shard, recipe, epoch: int, rank: int, world: int) -> Iterator[list[dict]]:
    """This rank's micro-batches (lists of encoded rows) of one epoch, in a seeded order."""
    bs, buf = recipe.optim.batch_size, recipe.data.shuffle_buffer
    rows, index = [], 0
    for table in shard.iter_batches(batch_size=256, batch_format="pyarrow",
                                    local_shuffle_buffer_size=buf or None,
                                    local_shuffle_seed=recipe.seed * 7919 + epoch if buf else None):
        for row in table.to_pylist():
            if index % world == rank:
                rows.append(row)
                if len(rows) == bs:
                    yield rows
                    rows = []
            index += 1


def _seed(recipe, rank: int, micro: int) -> int:
    return (recipe.seed * 1_000_003 + rank * 10_007 + micro) % (2**63)


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def train_loop(config: dict) -> None:
    """Ray Train entry point. config: recipe, task, model_config, vocab_text, steps_per_epoch,
    total_steps, progress (a ray.util.queue.Queue or None), should_stop (None, or a picklable
    callable that rank 0 asks at every logging / evaluation step: True ends the run there with a
    checkpoint and no export, as `checkpoint.stop_after` does; how `bert4ray tune` ends a trial
    that ASHA stops without killing its Train run)."""
    import deepspeed
    import ray.train
    import torch.distributed as dist

    from components.regularizers import regularized_step

    recipe, task = config["recipe"], config["task"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(recipe.scaling.cpus_per_worker)))
    tokenizer = tokenizer_from_text(config["vocab_text"], recipe.model.lowercase)
    model_cfg = ModelConfig(**config["model_config"])

    torch.manual_seed(recipe.seed)
    if recipe.model.init_from:
        model = Transformer.from_pretrained(recipe.model.init_from, config=model_cfg)
    else:
        model = Transformer(model_cfg)
    total, steps_per_epoch = config["total_steps"], config["steps_per_epoch"]
    warmup = recipe.schedule.warmup_steps or int(recipe.schedule.warmup_ratio * total)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=build_optimizer(model, recipe), config=deepspeed_config(recipe, world),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, warmup, total, recipe.schedule.decay)))
    device = engine.device
    module = engine.module

    step, epoch, micro_in_epoch = 0, 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = json.loads((Path(d) / STATE_FILE).read_text())
            engine.load_checkpoint(d, tag=state["tag"])
        step, epoch, micro_in_epoch = state["step"], state["epoch"], state["micro_in_epoch"]

    ga, log_every = recipe.optim.grad_accum, recipe.schedule.log_every
    micro_per_epoch = steps_per_epoch * ga
    queue = config.get("progress")
    should_stop = config.get("should_stop")
    window: dict[str, float] = {}
    window_micro, tokens, t0 = 0, 0, time.perf_counter()
    train_shard = ray.train.get_dataset_shard("train")

    def loss_fn(m, batch, inputs_embeds):
        return task.loss_fn(m, batch, inputs_embeds)

    def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(t)
            t /= world
        return dict(zip(keys, t.tolist()))

    def evaluate() -> dict[str, float]:
        if not config.get("has_validation", True):    # Ray Train raises for a dataset it was not given
            return {}
        val = ray.train.get_dataset_shard("validation")
        g = torch.Generator().manual_seed(recipe.seed + 12345)   # the same masks at every evaluation

        def batches():
            for table in val.iter_batches(batch_size=recipe.optim.batch_size, batch_format="pyarrow"):
                rows = table.to_pylist()
                if rows:
                    yield _to_device(task.collate(rows, tokenizer, g), device)
        module.eval()
        metrics = task.evaluate(module, batches(), tokenizer)
        module.train()
        return {f"eval_{k}": v for k, v in metrics.items()}

    def save_and_report(metrics: dict, final: bool) -> None:
        with tempfile.TemporaryDirectory() as d:
            tag = f"step{step}"
            engine.save_checkpoint(d, tag=tag)
            state_dict = None
            if recipe.deepspeed.zero_stage == 3:   # every rank takes part in the gathering
                state_dict = engine._zero3_consolidated_16bit_state_dict()
            if rank == 0:
                (Path(d) / STATE_FILE).write_text(json.dumps(
                    {"tag": tag, "step": step, "epoch": epoch, "micro_in_epoch": micro_in_epoch}))
                if final:
                    export(module, state_dict, model_cfg, Path(d) / MODEL_SUBDIR, config)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    module.train()
    last_metrics: dict[str, float] = {}
    resume_skip = micro_in_epoch        # micro-batches of this epoch consumed before a resume
    while step < total:
        for i, rows in enumerate(micro_batches(train_shard, recipe, epoch, rank, world)):
            if i >= micro_per_epoch:
                break
            if i < resume_skip:          # skipped without computing
                continue
            micro = epoch * micro_per_epoch + i
            g = torch.Generator().manual_seed(_seed(recipe, rank, micro))
            torch.manual_seed(_seed(recipe, rank, micro) + 1)
            batch = _to_device(task.collate(rows, tokenizer, g), device)
            parts = regularized_step(module, batch, loss_fn, recipe.regularizers, backward=engine.backward)
            engine.step()
            micro_in_epoch = i + 1
            window_micro += 1
            tokens += task.count_tokens(batch)
            for k, v in parts.items():
                window[k] = window.get(k, 0.0) + float(v)
            if micro_in_epoch % ga:
                continue
            step += 1
            if step % log_every == 0 or step == total:
                elapsed = time.perf_counter() - t0
                logged = {k: v / window_micro for k, v in window.items()}
                grad_norm = engine.get_global_grad_norm()
                logged["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
                logged["tokens_per_s"] = tokens / max(elapsed, 1e-9)
                logged = mean_over_ranks(logged)
                logged["tokens_per_s"] *= world                      # all ranks' tokens together
                logged["lr"] = float(scheduler.get_last_lr()[0])
                last_metrics = logged
                if rank == 0 and queue is not None:
                    queue.put({"step": step, "total": total, "epoch": epoch, **logged})
                window, window_micro, tokens, t0 = {}, 0, 0, time.perf_counter()
            if recipe.schedule.eval_every and step % recipe.schedule.eval_every == 0 and step < total:
                ev = evaluate()
                if rank == 0 and queue is not None and ev:
                    queue.put({"step": step, "total": total, **ev})
            if recipe.checkpoint.every_steps and step % recipe.checkpoint.every_steps == 0 and step < total:
                save_and_report({"step": step, **last_metrics}, final=False)
            if recipe.checkpoint.stop_after and step == recipe.checkpoint.stop_after and step < total:
                save_and_report({"step": step, "stopped": 1, **last_metrics}, final=False)
                return
            if should_stop is not None and step < total and (
                    step % log_every == 0 or (recipe.schedule.eval_every and step % recipe.schedule.eval_every == 0)):
                flag = torch.tensor([1.0 if rank == 0 and should_stop() else 0.0])
                if world > 1:
                    dist.all_reduce(flag)        # every rank stops at the same step
                if flag.item() > 0:
                    save_and_report({"step": step, "stopped": 1, **last_metrics}, final=False)
                    return
            if step >= total:
                break
        if step >= total:
            break
        epoch, micro_in_epoch, resume_skip = epoch + 1, 0, 0

    ev = evaluate()
    final = {"step": step, **last_metrics, **ev}
    if rank == 0 and queue is not None and ev:
        queue.put({"step": step, "total": total, **ev})
    save_and_report(final, final=True)


def export(module, state_dict, model_cfg: ModelConfig, out: Path, config: dict) -> None:
    """Copy the trained weights into a fresh Transformer (the engine's module holds process groups
    and cannot be pickled) and write a model directory."""
    fresh = Transformer(model_cfg)
    source = state_dict if state_dict is not None else module.state_dict()
    fresh.load_state_dict({k: v.detach().float().cpu() for k, v in source.items()})
    vocab = out.parent / "vocab.txt.export"
    vocab.write_text(config["vocab_text"], encoding="utf-8")
    recipe = config["recipe"]
    fresh.save_pretrained(out, metadata={"vocab_file": str(vocab), "task": recipe.task.name,
                                         **config.get("metadata", {})}, lowercase=recipe.model.lowercase)
    vocab.unlink()

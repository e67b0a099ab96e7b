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
import torch.distributed as dist

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
    RankTraining(config).train()


class RankTraining:
    """One rank's part of the run: the DeepSpeed engine, where the run stands (step, epoch,
    micro-batches consumed in the epoch) and the steps that advance it."""

    def __init__(self, config: dict):
        import ray.train
        self.config = config
        recipe = self.recipe = config["recipe"]
        self.task = config["task"]
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(max(1, int(recipe.scaling.cpus_per_worker)))
        self.tokenizer = tokenizer_from_text(config["vocab_text"], recipe.model.lowercase)
        self.model_cfg = ModelConfig(**config["model_config"])
        self.total, self.steps_per_epoch = config["total_steps"], config["steps_per_epoch"]
        self.engine, self.scheduler = self._engine()
        self.device, self.module = self.engine.device, self.engine.module
        self.step, self.epoch, self.micro_in_epoch = self._restore()
        self.micro_per_epoch = self.steps_per_epoch * recipe.optim.grad_accum
        self.queue, self.should_stop = config.get("progress"), config.get("should_stop")
        self._reset_window()
        self.train_shard = ray.train.get_dataset_shard("train")
        self.last_metrics: dict[str, float] = {}

    def _engine(self):
        """(engine, lr scheduler): the model, fresh or model.init_from, in DeepSpeed with AdamW and
        the warmup / decay schedule."""
        import deepspeed
        recipe, total = self.recipe, self.total
        torch.manual_seed(recipe.seed)
        if recipe.model.init_from:
            model = Transformer.from_pretrained(recipe.model.init_from, config=self.model_cfg)
        else:
            model = Transformer(self.model_cfg)
        warmup = recipe.schedule.warmup_steps or int(recipe.schedule.warmup_ratio * total)
        engine, _, _, scheduler = deepspeed.initialize(
            model=model, optimizer=build_optimizer(model, recipe), config=deepspeed_config(recipe, self.world),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: lr_factor(s, warmup, total, recipe.schedule.decay)))
        return engine, scheduler

    def _restore(self) -> tuple[int, int, int]:
        """(step, epoch, micro_in_epoch) of the checkpoint Ray Train resumes from, with the engine's
        state loaded from it; zeros for a new run."""
        import ray.train
        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return 0, 0, 0
        with checkpoint.as_directory() as d:
            state = json.loads((Path(d) / STATE_FILE).read_text())
            self.engine.load_checkpoint(d, tag=state["tag"])
        return state["step"], state["epoch"], state["micro_in_epoch"]

    def _reset_window(self) -> None:
        """Start a new logging window: summed loss parts, micro-batches, tokens, start time."""
        self.window: dict[str, float] = {}
        self.window_micro, self.tokens, self.t0 = 0, 0, time.perf_counter()

    def train(self) -> None:
        """Epochs until the last step, then the final evaluation and the export; or a checkpoint
        and no export when the run is stopped early."""
        self.module.train()
        resume_skip = self.micro_in_epoch        # micro-batches of this epoch consumed before a resume
        while self.step < self.total:
            if self._train_epoch(resume_skip):
                return
            if self.step >= self.total:
                break
            self.epoch, self.micro_in_epoch, resume_skip = self.epoch + 1, 0, 0
        ev = self.evaluate()
        final = {"step": self.step, **self.last_metrics, **ev}
        self._send_evaluation(ev)
        self.save_and_report(final, final=True)

    def _train_epoch(self, resume_skip: int) -> bool:
        """This epoch's micro-batches from `resume_skip` on; True when the run stopped early."""
        batches = micro_batches(self.train_shard, self.recipe, self.epoch, self.rank, self.world)
        for i, rows in enumerate(batches):
            if i >= self.micro_per_epoch:
                break
            if i < resume_skip:          # skipped without computing
                continue
            self._micro_step(i, rows)
            if self.micro_in_epoch % self.recipe.optim.grad_accum:
                continue
            self.step += 1
            if self._after_step():
                return True
            if self.step >= self.total:
                break
        return False

    def _micro_step(self, i: int, rows: list[dict]) -> None:
        """Forward and backward of micro-batch i of the epoch (masks and dropout seeded by rank and
        micro-step), then the engine's step (an optimizer step every grad_accum micro-batches)."""
        from components.regularizers import regularized_step
        recipe = self.recipe
        micro = self.epoch * self.micro_per_epoch + i
        g = torch.Generator().manual_seed(_seed(recipe, self.rank, micro))
        torch.manual_seed(_seed(recipe, self.rank, micro) + 1)
        batch = _to_device(self.task.collate(rows, self.tokenizer, g), self.device)
        parts = regularized_step(self.module, batch, self.task.loss_fn, recipe.regularizers,
                                 backward=self.engine.backward)
        self.engine.step()
        self.micro_in_epoch = i + 1
        self.window_micro += 1
        self.tokens += self.task.count_tokens(batch)
        for k, v in parts.items():
            self.window[k] = self.window.get(k, 0.0) + float(v)

    def _after_step(self) -> bool:
        """At the end of an optimizer step: log, evaluate and checkpoint when due; True when the
        run stops here (checkpoint.stop_after or should_stop)."""
        schedule, checkpoint, step, total = self.recipe.schedule, self.recipe.checkpoint, self.step, self.total
        if step % schedule.log_every == 0 or step == total:
            self._log()
        if schedule.eval_every and step % schedule.eval_every == 0 and step < total:
            self._send_evaluation(self.evaluate())
        if checkpoint.every_steps and step % checkpoint.every_steps == 0 and step < total:
            self.save_and_report({"step": step, **self.last_metrics}, final=False)
        if (checkpoint.stop_after and step == checkpoint.stop_after and step < total) or self._stop_requested():
            self.save_and_report({"step": step, "stopped": 1, **self.last_metrics}, final=False)
            return True
        return False

    def _log(self) -> None:
        """The window's mean loss parts, grad norm, tokens/s and lr, averaged over ranks, to the
        driver's progress queue."""
        elapsed = time.perf_counter() - self.t0
        logged = {k: v / self.window_micro for k, v in self.window.items()}
        grad_norm = self.engine.get_global_grad_norm()
        logged["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        logged["tokens_per_s"] = self.tokens / max(elapsed, 1e-9)
        logged = self._mean_over_ranks(logged)
        logged["tokens_per_s"] *= self.world                      # all ranks' tokens together
        logged["lr"] = float(self.scheduler.get_last_lr()[0])
        self.last_metrics = logged
        if self.rank == 0 and self.queue is not None:
            self.queue.put({"step": self.step, "total": self.total, "epoch": self.epoch, **logged})
        self._reset_window()

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(t)
            t /= self.world
        return dict(zip(keys, t.tolist()))

    def _stop_requested(self) -> bool:
        """should_stop, asked by rank 0 at logging and evaluation steps before the last; every rank
        stops at the same step."""
        schedule, step = self.recipe.schedule, self.step
        if self.should_stop is None or step >= self.total or not (
                step % schedule.log_every == 0 or (schedule.eval_every and step % schedule.eval_every == 0)):
            return False
        flag = torch.tensor([1.0 if self.rank == 0 and self.should_stop() else 0.0])
        if self.world > 1:
            dist.all_reduce(flag)
        return flag.item() > 0

    def evaluate(self) -> dict[str, float]:
        """The task's evaluation on the validation rows, as eval_<name> metrics ({} without them)."""
        import ray.train
        if not self.config.get("has_validation", True):    # Ray Train raises for a dataset it was not given
            return {}
        val = ray.train.get_dataset_shard("validation")
        g = torch.Generator().manual_seed(self.recipe.seed + 12345)   # the same masks at every evaluation

        def batches():
            for table in val.iter_batches(batch_size=self.recipe.optim.batch_size, batch_format="pyarrow"):
                rows = table.to_pylist()
                if rows:
                    yield _to_device(self.task.collate(rows, self.tokenizer, g), self.device)
        self.module.eval()
        metrics = self.task.evaluate(self.module, batches(), self.tokenizer)
        self.module.train()
        return {f"eval_{k}": v for k, v in metrics.items()}

    def _send_evaluation(self, ev: dict[str, float]) -> None:
        if self.rank == 0 and self.queue is not None and ev:
            self.queue.put({"step": self.step, "total": self.total, **ev})

    def save_and_report(self, metrics: dict, final: bool) -> None:
        """A checkpoint of the engine and of where the run stands (final: with the exported model
        directory), reported to Ray Train with `metrics`."""
        import ray.train
        engine = self.engine
        with tempfile.TemporaryDirectory() as d:
            tag = f"step{self.step}"
            engine.save_checkpoint(d, tag=tag)
            state_dict = None
            if self.recipe.deepspeed.zero_stage == 3:   # every rank takes part in the gathering
                state_dict = engine._zero3_consolidated_16bit_state_dict()
            if self.rank == 0:
                (Path(d) / STATE_FILE).write_text(json.dumps(
                    {"tag": tag, "step": self.step, "epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch}))
                if final:
                    export(self.module, state_dict, self.model_cfg, Path(d) / MODEL_SUBDIR, self.config)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


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

